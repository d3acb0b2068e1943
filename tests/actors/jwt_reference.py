#!/usr/bin/python3
"""Verifies an RS256 JWT with PyJWT (Debian's python3-jwt), for firebase_token_test.cpp.

Reads {"assertion", "public_key_pem", "audience", "issuer"} on stdin and writes
{"valid": true, "header": {...}, "claims": {...}} when PyJWT accepts the
signature (RS256 only), the audience, the issuer and the times (exp, iat
required), else {"valid": false, "error": "..."}.
"""
import json
import sys

import jwt


def main():
    args = json.load(sys.stdin)
    try:
        claims = jwt.decode(args["assertion"], args["public_key_pem"], algorithms=["RS256"],
                            audience=args["audience"], issuer=args["issuer"],
                            options={"require": ["exp", "iat", "iss", "aud"]})
        header = jwt.get_unverified_header(args["assertion"])
    except jwt.PyJWTError as e:
        json.dump({"valid": False, "error": f"{type(e).__name__}: {e}"}, sys.stdout)
        return
    json.dump({"valid": True, "header": header, "claims": claims}, sys.stdout)


if __name__ == "__main__":
    main()
