# bench/gen_trail.py DIR N: writes a hash-chained audit trail of N records (10 per session)
# into DIR/audit.jsonl, for timing the compliance tools (bench/audit_tools.sh).
import hashlib, json, sys, os
d=sys.argv[1]; n=int(sys.argv[2])
os.makedirs(d, exist_ok=True)
prev="0"*64
with open(os.path.join(d,"audit.jsonl"),"wb") as f:
    for i in range(1,n+1):
        s=i//10
        rec={"seq":i,"prev":prev,"time":"2026-12-03T07:%02d:%02d.000Z"%((i//60)%60,i%60),
             "event":"grant.issued" if i%10==1 else "statement","session_id":"s-%016x"%s,
             "grant_id":"g-1","sub":"agent-%d"%(s%7),"connection":"reporting","protocol":"postgres",
             "client_addr":"127.0.0.1:5","decision":"allow","statement":"SELECT * FROM items WHERE id = %d"%i,"kind":"SELECT"}
        line=json.dumps(rec,separators=(",",":")).encode()
        f.write(line+b"\n")
        prev=hashlib.sha256(line).hexdigest()
