"""python3 -m tailor_client: a few client calls from a shell.

    python3 -m tailor_client --server host:50051 --token-file alice.token \\
        --tls-ca ca.crt list
    python3 -m tailor_client submit job.yaml        # prints the job name
    python3 -m tailor_client wait fusionJobs/<id>
    python3 -m tailor_client fetch fusionJobs/<id> patch out.safetensors

Errors print "error: CODE: details" and exit 1. tailorctl is the full CLI.
"""

import argparse
import os
import sys

from tailor_client import errors, pb
from tailor_client.client import Client


def _token(path):
    """The token in `path`, else $TAILOR_TOKEN, else None."""
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("TAILOR_TOKEN") or None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tailor_client",
                                description=__doc__.splitlines()[0])
    p.add_argument("--server", default=os.environ.get("TAILOR_SERVER",
                                                      "127.0.0.1:50051"))
    p.add_argument("--token-file", help="bearer token (else $TAILOR_TOKEN)")
    p.add_argument("--tls-ca", help="CA bundle: use TLS")
    p.add_argument("--tls-cert", help="client certificate (mTLS)")
    p.add_argument("--tls-key", help="client key (mTLS)")
    p.add_argument("--tls-server-name")
    p.add_argument("command", choices=["list", "get", "submit", "wait",
                                       "fetch"])
    p.add_argument("args", nargs="*",
                   help="get/wait: JOB; submit: JOB_FILE; fetch: JOB "
                        "patch|report PATH")
    a = p.parse_args(argv)
    want = {"list": 0, "get": 1, "submit": 1, "wait": 1, "fetch": 3}
    if len(a.args) != want[a.command]:
        p.error("%s takes %d argument(s)" % (a.command, want[a.command]))
    try:
        with Client(a.server, _token(a.token_file), a.tls_ca,
                    client_cert=a.tls_cert, client_key=a.tls_key,
                    server_name=a.tls_server_name) as client:
            if a.command == "list":
                for job in client.list():
                    print(job.name, pb.State.Name(job.state), job.creator)
            elif a.command == "get":
                print(client.get(a.args[0]))
            elif a.command == "submit":
                print(client.submit(a.args[0]).name)
            elif a.command == "wait":
                done = client.wait(a.args[0])
                print(done.name, pb.State.Name(done.state))
            else:
                print(client.fetch(a.args[0], a.args[1], a.args[2]))
    except errors.TailorError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
