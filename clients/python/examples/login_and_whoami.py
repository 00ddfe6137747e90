"""Signs in to storefront and prints the current user."""

from __future__ import annotations

import argparse
import getpass
import sys

import grpc
from storefront.v1 import access_pb2, identity_service_pb2
from storefront_client import StorefrontClient, create_channel, error_info, request_id


def main(argv: list[str] | None = None) -> int:
    """Runs the example; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", help="asked for when omitted")
    parser.add_argument("--ca", help="PEM file of the CA that signed the server (enables TLS)")
    parser.add_argument("--cert", help="client certificate PEM file (mutual TLS)")
    parser.add_argument("--key", help="client private key PEM file (mutual TLS)")
    args = parser.parse_args(argv)
    password = args.password or getpass.getpass("Password: ")

    channel = create_channel(
        args.target, root_certificates=args.ca, client_certificate=args.cert, client_key=args.key
    )
    with StorefrontClient(channel) as client:
        try:
            client.login(args.email, password)
            response = client.identity.GetCurrentUser(identity_service_pb2.GetCurrentUserRequest())
        except grpc.RpcError as err:
            reason, _ = error_info(err)
            code = f"{err.code().name} {reason}".strip()
            print(
                f"error: {code}: {err.details()} (request id {request_id(err) or '-'})",
                file=sys.stderr,
            )
            return 1
    user = response.user
    print(f"id:           {user.id}")
    print(f"email:        {user.email}")
    print(f"display name: {user.display_name}")
    print(f"role:         {access_pb2.Role.Name(user.role)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
