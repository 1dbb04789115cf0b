#!/usr/bin/env python3
"""Records the sock_diag fixtures the unit tests of netmon/src/source.rs replay.

Run as root from the workspace, in a fresh network namespace so only these sockets exist:
    NETMON=target/debug/netmon unshare -n sh -c 'ip link set lo up && \
        python3 netmon/testdata/record-fixture.py netmon/testdata'
then write each expected text with ss replaying the same file, e.g.
    TCPDIAG_FILE=netmon/testdata/snapshot.dump ss -tan | sed 's/ *$//' > netmon/testdata/snapshot.ss-tan.txt
(and -tano; snapshot-mi.dump with -tanmi).
"""
import os
import socket
import subprocess
import sys
import time

out = sys.argv[1]
def pair(fam, addr, lport):
    l = socket.socket(fam, socket.SOCK_STREAM); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, lport)); l.listen(128)
    return l
keep = []
# v4 listener with an accepted pair (5 unread bytes at server), one waiting in accept queue
l4 = pair(socket.AF_INET, "127.0.0.1", 8080); keep.append(l4)
c1 = socket.create_connection(("127.0.0.1", 8080)); s1, _ = l4.accept(); c1.send(b"hello"); keep += [c1, s1]
# TIME-WAIT: client closes first
c3 = socket.create_connection(("127.0.0.1", 8080)); s3, _ = l4.accept(); c3.close(); time.sleep(0.05); s3.close()
# FIN-WAIT-2 / CLOSE-WAIT: client shuts down writing, server keeps open
c4 = socket.create_connection(("127.0.0.1", 8080)); s4, _ = l4.accept(); c4.shutdown(socket.SHUT_WR); keep += [c4, s4]
c2 = socket.create_connection(("127.0.0.1", 8080)); keep.append(c2)  # in accept queue
# ssh-port listener (service names)
l22 = pair(socket.AF_INET, "127.0.0.1", 22); keep.append(l22)
# dual-stack v6 listener with a v4-mapped connection and a ::1 connection; keepalive on one
l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l6.bind(("::", 9090)); l6.listen(64); keep.append(l6)
c5 = socket.create_connection(("127.0.0.1", 9090)); s5, _ = l6.accept(); keep += [c5, s5]
c6 = socket.create_connection(("::1", 9090)); s6, _ = l6.accept(); c6.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1); c6.send(b"x" * 3); keep += [c6, s6]
# v6-only listener
l7 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); l7.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
l7.bind(("::1", 443)); l7.listen(16); keep.append(l7)
time.sleep(0.2)
netmon = os.environ["NETMON"]
subprocess.run([netmon, "snapshot", "--dump-to", out + "/snapshot.dump"], check=True)
subprocess.run([netmon, "snapshot", "-mi", "--dump-to", out + "/snapshot-mi.dump"], check=True)
