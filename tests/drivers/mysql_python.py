"""PyMySQL and mysql-connector-python through sqlgate's MySQL listener over TLS, with
no option beyond TLS: both answer the gateway's caching_sha2_password full-authentication
request by sending the token in clear over TLS. Prints one line per check; exits 1 on a
failure. Usage: mysql_python.py PORT DATABASE TOKEN"""
import ssl
import sys

port, database, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
failed = False


def check(name, ok, detail=""):
    global failed
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""))
    failed = failed or not ok


import pymysql

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = pymysql.connect(host="127.0.0.1", port=port, user="agent-7", password=token,
                       database=database, ssl=ctx)
cur = conn.cursor()
cur.execute("SELECT name FROM items WHERE id = %s", (1,))
check("pymysql read", cur.fetchone() == ("apple",))
try:
    cur.execute("DELETE FROM items")
    check("pymysql write denied", False, "the DELETE ran")
except pymysql.MySQLError as e:
    check("pymysql write denied", e.args[0] == 1227, e)
conn.close()

import mysql.connector

conn = mysql.connector.connect(host="127.0.0.1", port=port, user="agent-7", password=token,
                               database=database, ssl_verify_cert=False, ssl_disabled=False)
cur = conn.cursor(prepared=True)
cur.execute("SELECT name FROM items WHERE id = %s", (2,))
check("mysql-connector prepared read", cur.fetchone() == ("pear",))
try:
    cur.execute("UPDATE items SET name = 'x'")
    check("mysql-connector write denied", False, "the UPDATE ran")
except mysql.connector.Error as e:
    check("mysql-connector write denied", e.errno == 1227, e)
conn.close()
sys.exit(1 if failed else 0)
