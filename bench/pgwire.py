"""A minimal PostgreSQL wire-protocol client (Python standard library only).

Used by bench/sessions.py and bench/parse_stall.py. Only what the benchmarks need:
startup (optionally after an SSLRequest), trust or cleartext-password login (sqlgate
asks for the token as a cleartext password), simple Query, and ErrorResponse fields,
so a refusal's SQLSTATE is seen exactly (libpq-based drivers only give the text of
errors that end a login).
"""

import socket
import ssl
import struct

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103


class PgError(Exception):
    """An ErrorResponse (or a broken connection, sqlstate None)."""

    def __init__(self, fields, during=""):
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.severity = fields.get("V") or fields.get("S")
        self.message = fields.get("M", "")
        self.hint = fields.get("H")
        self.during = during
        super().__init__(f"{self.severity} {self.sqlstate}: {self.message}")


def _error_fields(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


_TLS = None


def _tls_context():
    """One client context, built once: no CA bundle to load per connection (the bench's
    certificate is self-signed and not verified, like libpq's sslmode=require)."""
    global _TLS
    if _TLS is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _TLS = ctx
    return _TLS


def _msg(kind, payload=b""):
    return kind + struct.pack("!I", len(payload) + 4) + payload


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.params = {}

    # -- reading

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PgError({"M": "connection closed by the server"}, "read")
            self.buf += chunk

    def read_message(self):
        self._fill(5)
        kind = bytes(self.buf[0:1])
        (length,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + length)
        payload = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return kind, payload

    # -- login

    @classmethod
    def connect(cls, host, port, user, database, password=None, sslmode="disable",
                params=None, timeout=30.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if sslmode != "disable":
                sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
                answer = sock.recv(1)
                if answer == b"S":
                    sock = _tls_context().wrap_socket(sock, server_hostname=host)
                elif answer == b"E":
                    # An ErrorResponse instead of an answer (e.g. a connection cap).
                    conn = cls(sock)
                    conn.buf += answer
                    kind, payload = conn.read_message()
                    raise PgError(_error_fields(payload), "ssl")
                else:
                    raise PgError({"M": f"server refused TLS (answer {answer!r})"}, "ssl")
            conn = cls(sock)
            body = struct.pack("!I", PROTOCOL_3_0)
            kv = {"user": user, "database": database}
            kv.update(params or {})
            for k, v in kv.items():
                body += k.encode() + b"\0" + str(v).encode() + b"\0"
            body += b"\0"
            sock.sendall(struct.pack("!I", len(body) + 4) + body)
            while True:
                kind, payload = conn.read_message()
                if kind == b"R":
                    (code,) = struct.unpack("!I", payload[:4])
                    if code == 0:
                        continue
                    if code == 3:
                        if password is None:
                            raise PgError({"M": "server asked for a password"}, "login")
                        sock.sendall(_msg(b"p", password.encode() + b"\0"))
                        continue
                    raise PgError({"M": f"unsupported authentication request {code}"}, "login")
                if kind == b"E":
                    raise PgError(_error_fields(payload), "login")
                if kind == b"S":
                    k, v = payload[:-1].split(b"\0", 1)
                    conn.params[k.decode()] = v.decode()
                if kind == b"Z":
                    sock.settimeout(None)
                    return conn
        except BaseException:
            sock.close()
            raise

    # -- queries

    def send_query(self, sql):
        if isinstance(sql, str):
            sql = sql.encode()
        self.sock.sendall(_msg(b"Q", sql + b"\0"))

    def read_result(self):
        """Reads up to ReadyForQuery; returns the rows (lists of str/None) or raises PgError."""
        rows, error = [], None
        while True:
            kind, payload = self.read_message()
            if kind == b"D":
                (n,) = struct.unpack("!H", payload[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", payload[pos : pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos : pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif kind == b"E":
                error = PgError(_error_fields(payload), "query")
            elif kind == b"Z":
                if error:
                    raise error
                return rows

    def query(self, sql):
        self.send_query(sql)
        return self.read_result()

    def close(self):
        try:
            self.sock.sendall(_msg(b"X"))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def rss_kib(pid):
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0
