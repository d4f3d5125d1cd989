"""Keys and tokens for the JWT sign-in tests, made with PyJWT and
cryptography, as an identity provider would make them.

    tokens.py keys DIR KID...       new RSA (kid rsa-*) or P-256 (kid ec-*)
                                    keys: DIR/KID.pem private, and
                                    DIR/jwks.json with every public key
                                    named (replaced whole)
    tokens.py sign DIR SPECS        SPECS is a JSON list of
                                    {"alg", "kid"?, "claims", "secret"?};
                                    prints the tokens as a JSON list
"""

import json
import pathlib
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def keys(folder, kids):
    folder.mkdir(parents=True, exist_ok=True)
    public = []
    for kid in kids:
        if kid.startswith("rsa"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            alg = "RS256"
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            alg = "ES256"
        (folder / f"{kid}.pem").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algorithm.to_jwk(private.public_key()))
        jwk.update({"kid": kid, "use": "sig", "alg": alg})
        public.append(jwk)
    # Written beside and renamed, so the server never reads half a file.
    staged = folder / "jwks.json.new"
    staged.write_text(json.dumps({"keys": public}))
    staged.replace(folder / "jwks.json")


def sign(folder, specs):
    tokens = []
    for spec in specs:
        alg = spec["alg"]
        if alg == "HS256":
            key = spec["secret"]
        else:
            key = (folder / f"{spec['kid']}.pem").read_bytes()
        headers = {"kid": spec["kid"]} if "kid" in spec else None
        tokens.append(jwt.encode(spec["claims"], key, algorithm=alg, headers=headers))
    print(json.dumps(tokens))


if __name__ == "__main__":
    command, folder = sys.argv[1], pathlib.Path(sys.argv[2])
    if command == "keys":
        keys(folder, sys.argv[3:])
    else:
        sign(folder, json.loads(sys.argv[3]))
