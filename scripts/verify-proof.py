#!/usr/bin/env python3
"""Offline verification of Warden ledger proofs and checkpoints (docs/ledger-log.md).

Independent of Warden: SHA-256 from hashlib, the RFC 9162 verification algorithms written
out here, and Ed25519 signatures checked with `openssl pkeyutl -verify -rawin`.

  verify-proof.py inclusion   FILE|-  [--pubkey HEX]   output of `warden ledger proof --json`
  verify-proof.py consistency FILE|-  [--pubkey HEX]   output of `warden ledger consistency --json`
  verify-proof.py checkpoint  FILE|-  [--pubkey HEX]   `warden ledger checkpoint --json` or a witness file

--pubkey is the signer's public key obtained out of band (e.g. from `warden ledger init` on
that host); without it the key embedded in the JSON is used, which proves integrity only
against that key. Exit 0 when everything verifies, 1 otherwise (the reason on stderr).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class Bad(Exception):
    pass


def sha256(b):
    return hashlib.sha256(b).digest()


def leaf_hash(entry):
    return sha256(b"\x00" + entry)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def unhex(s, what, length=32):
    try:
        b = bytes.fromhex(s)
    except (TypeError, ValueError):
        raise Bad(f"{what} is not hex")
    if length is not None and len(b) != length:
        raise Bad(f"{what} is not {length} bytes")
    return b


def root_from_inclusion(index, size, leaf, path):
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        raise Bad("leaf index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise Bad("inclusion path too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Bad("inclusion path too short")
    return r


def verify_consistency(m, n, old_root, new_root, proof):
    """RFC 9162 section 2.1.4.2."""
    if not 1 <= m <= n:
        raise Bad("sizes out of order")
    if m == n:
        if proof or old_root != new_root:
            raise Bad("equal sizes need an empty proof and equal roots")
        return
    path = list(proof)
    if m & (m - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise Bad("empty consistency proof")
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Bad("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Bad("consistency proof too short")
    if fr != old_root:
        raise Bad("the proof does not lead to the old root")
    if sr != new_root:
        raise Bad("the proof does not lead to the new root")


def signed_text(cp):
    """The checkpoint's signed bytes, rebuilt from its fields (the embedded text is not trusted)."""
    return (f"warden-checkpoint/v1\n{cp['host']}\n{int(cp['tree_size'])}\n"
            f"{cp['root_hex']}\n{cp['time']}\n").encode()


def verify_checkpoint(cp, pubkey_hex):
    key_hex = pubkey_hex or cp.get("public_key_hex")
    if not key_hex:
        raise Bad("no public key to check the checkpoint signature with")
    if pubkey_hex and cp.get("public_key_hex") and cp["public_key_hex"].lower() != pubkey_hex.lower():
        raise Bad("the checkpoint names a different public key than the trusted one")
    key = unhex(key_hex, "public key")
    sig = unhex(cp["signature_hex"], "signature", 64)
    unhex(cp["root_hex"], "checkpoint root")
    msg = signed_text(cp)
    if "signed_text" in cp and cp["signed_text"].encode() != msg:
        raise Bad("the checkpoint's signed_text does not match its fields")
    with tempfile.TemporaryDirectory() as d:
        paths = {n: os.path.join(d, n) for n in ("pub.der", "msg", "sig")}
        for name, data in (("pub.der", ED25519_SPKI_PREFIX + key), ("msg", msg), ("sig", sig)):
            with open(paths[name], "wb") as f:
                f.write(data)
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub.der"], "-keyform", "DER",
                            "-rawin", "-in", paths["msg"], "-sigfile", paths["sig"]],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Bad("the checkpoint signature does not verify (openssl: "
                      + (r.stdout + r.stderr).strip().splitlines()[-1] + ")")


def inclusion(doc, pubkey):
    entry = doc["entry"].encode()
    leaf = leaf_hash(entry)
    if leaf != unhex(doc["leaf_hash_hex"], "leaf hash"):
        raise Bad("the entry does not hash to the leaf hash")
    entry_obj = json.loads(entry)
    if entry_obj.get("seq") != doc["seq"]:
        raise Bad("the entry's seq differs from the proof's")
    path = [unhex(h, "path element") for h in doc["path_hex"]]
    root = root_from_inclusion(doc["seq"] - 1, doc["tree_size"], leaf, path)
    if root != unhex(doc["root_hex"], "root"):
        raise Bad("the inclusion path does not lead to the root")
    cp = doc["checkpoint"]
    if cp["tree_size"] != doc["tree_size"] or unhex(cp["root_hex"], "checkpoint root") != root:
        raise Bad("the proof's tree is not the signed checkpoint's")
    verify_checkpoint(cp, pubkey)
    return f"event {doc['seq']} is in the signed tree of {doc['tree_size']} entries (root {root.hex()})"


def consistency(doc, pubkey):
    old = unhex(doc["old_root_hex"], "old root")
    new = unhex(doc["new_root_hex"], "new root")
    proof = [unhex(h, "proof element") for h in doc["proof_hex"]]
    verify_consistency(doc["from"], doc["to"], old, new, proof)
    signed = []
    for key, size, root in (("old_checkpoint", doc["from"], old), ("new_checkpoint", doc["to"], new)):
        cp = doc.get(key)
        if cp:
            if cp["tree_size"] != size or unhex(cp["root_hex"], "checkpoint root") != root:
                raise Bad(f"{key} does not match the proof's tree")
            verify_checkpoint(cp, pubkey)
            signed.append(key)
    return (f"the tree of {doc['to']} entries extends the tree of {doc['from']}"
            + (f" (signed: {', '.join(signed)})" if signed else " (no signed checkpoints given)"))


def checkpoint(doc, pubkey):
    verify_checkpoint(doc, pubkey)
    return f"checkpoint of {doc['tree_size']} entries signed by {doc['host']} verifies"


def main(argv):
    if len(argv) < 3 or argv[1] not in ("inclusion", "consistency", "checkpoint"):
        print(__doc__, file=sys.stderr)
        return 2
    pubkey = None
    if "--pubkey" in argv:
        i = argv.index("--pubkey")
        pubkey = argv[i + 1]
    src = argv[2]
    try:
        text = sys.stdin.read() if src == "-" else open(src).read()
        doc = json.loads(text)
        print({"inclusion": inclusion, "consistency": consistency, "checkpoint": checkpoint}[argv[1]](doc, pubkey))
        return 0
    except Bad as e:
        print(f"verify-proof: FAILED: {e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as e:
        print(f"verify-proof: FAILED: malformed input: {e!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
