#!/usr/bin/env python3
"""Generate tests/data/kat2.json: protocol 2 known-answer vectors from an implementation
independent of secagg's Rust code (Python 'cryptography' for ECDH, ECDSA, HKDF, AES-GCM,
AES-CTR; plain integers for Shamir mod the P-256 order). Run: pip install cryptography
Follows docs/protocol.md step by step. ECDSA signatures from Python are randomised, so the
Rust test only checks that it *verifies* them."""
import hashlib, json, math, struct, sys
from itertools import combinations
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order

def u32(x): return struct.pack(">I", x)
def u64(x): return struct.pack(">Q", x)
def s(x): b = x.encode(); return u32(len(b)) + b
def bts(b): return u32(len(b)) + b
def fp(label): return hashlib.sha256(label.encode()).digest()
def fpset(fps):
    assert fps == sorted(fps) and len(set(fps)) == len(fps)
    return u32(len(fps)) + b"".join(fps)
def scalar(label): return int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % N
def key(d): return ec.derive_private_key(d, ec.SECP256R1())
def point(d): return key(d).public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
def ecdh_x(d, peer_point):
    return key(d).exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point))
def hkdf(salt, ikm, info, n): return HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(ikm)
def ks64(k): return Cipher(algorithms.AES(k), modes.CTR(b"\0" * 16)).encryptor().update(b"\0" * 64)
def b32(x): return x.to_bytes(32, "big")

# --- Layout digest
layout = dict(container="safetensors", tensors=[dict(name="bias", dtype="f32", shape=[4]),
                                                 dict(name="weight", dtype="f64", shape=[2, 3])])
lay = s(layout["container"]) + u32(len(layout["tensors"]))
for t in layout["tensors"]:
    lay += s(t["name"]) + s(t["dtype"]) + u32(len(t["shape"])) + b"".join(u64(d) for d in t["shape"])
layout_digest = hashlib.sha256(s("secagg/2 layout") + lay).digest()
d = sum(math.prod(t["shape"]) for t in layout["tensors"])

# --- Parties: three invited nodes u, v, w and a researcher
names = ["u", "v", "w"]
fps = {n: fp("kat2 certificate " + n) for n in names}
invitees = sorted(fps.values())
researcher = fp("kat2 certificate researcher")
model_digest = hashlib.sha256(b"kat2 model").digest()
ctxp = dict(federation=hashlib.sha256(b"kat2 roster").hexdigest(), round=42, researcher=researcher.hex(),
            invitees=[f.hex() for f in invitees], clip=0.5, bits=16, modulus_bits=32, word_bytes=4,
            max_weight=1000, threshold=2, length=d, layout_digest=layout_digest.hex(),
            model_digest=model_digest.hex(), label="update")
ctx = (s("secagg/2") + s(ctxp["federation"]) + u64(ctxp["round"]) + researcher + fpset(invitees)
       + struct.pack(">d", ctxp["clip"]) + u32(16) + u32(32) + u32(4) + u64(1000) + u32(2) + u64(d)
       + layout_digest + b"\x01" + model_digest + s("update"))

# --- Per-round secrets and adverts (t = 2: polynomials of degree 1)
sec = {n: dict(cert=scalar("kat2 cert key " + n), c=scalar("kat2 c " + n), s=scalar("kat2 s " + n),
               b=scalar("kat2 b " + n), s1=scalar("kat2 s coeff " + n), b1=scalar("kat2 b coeff " + n))
       for n in names}
def advert_bytes(n):
    x = sec[n]
    com = lambda cs: u32(len(cs)) + b"".join(point(c) for c in cs)
    return (fps[n] + point(x["c"]) + point(x["s"]) + point(x["b"]) + com([x["s"], x["s1"]]) + com([x["b"], x["b1"]]))
def advert_msg(n): return s("secagg/2 advertise") + ctx + advert_bytes(n)
def sign(d, msg):
    r, s_ = decode_dss_signature(key(d).sign(msg, ec.ECDSA(hashes.SHA256())))
    return b32(r) + b32(s_)

adverts = {}
for n in names:
    m = advert_msg(n)
    adverts[n] = dict(fp=fps[n].hex(), cert_secret=b32(sec[n]["cert"]).hex(), cert_public=point(sec[n]["cert"]).hex(),
                      c=b32(sec[n]["c"]).hex(), s=b32(sec[n]["s"]).hex(), b=b32(sec[n]["b"]).hex(),
                      s_coeff1=b32(sec[n]["s1"]).hex(), b_coeff1=b32(sec[n]["b1"]).hex(),
                      wire=advert_bytes(n).hex(), signed_message=m.hex(), python_signature=sign(sec[n]["cert"], m).hex())

# --- Shares u -> v, both directions
u, v = "u", "v"
x_shared = ecdh_x(sec[u]["c"], point(sec[v]["c"]))
assert x_shared == ecdh_x(sec[v]["c"], point(sec[u]["c"]))
def share_info(a, b): return s("secagg/2 share") + ctx + fps[a] + fps[b]
k_uv = hkdf(None, x_shared, share_info(u, v), 32)
k_vu = hkdf(None, x_shared, share_info(v, u), 32)
xv = invitees.index(fps[v]) + 1
s_share = (sec[u]["s"] + sec[u]["s1"] * xv) % N
b_share = (sec[u]["b"] + sec[u]["b1"] * xv) % N
plain = fps[u] + fps[v] + b32(s_share) + b32(b_share)
sealed = AESGCM(k_uv).encrypt(b"\0" * 12, plain, share_info(u, v))
assert len(sealed) == 144

# --- Pairwise and self-mask keys
lo, hi = sorted([u, v], key=lambda n: fps[n])
pw_x = ecdh_x(sec[u]["s"], point(sec[v]["s"]))
pairwise = hkdf(b"secagg/2 pairwise", pw_x, ctx + fps[lo] + fps[hi] + point(sec[lo]["s"]) + point(sec[hi]["s"]), 16)
self_key = hkdf(None, b32(sec[u]["b"]), s("secagg/2 self") + ctx + fps[u], 16)

# --- Consistency: U2 = {u, v, w}, U3 = {u, w}
u2 = sorted(names, key=lambda n: fps[n])
u3 = sorted(["u", "w"], key=lambda n: fps[n])
h = hashlib.sha256(b"".join(bts(advert_msg(n)) for n in u2)).digest()
consistency = s("secagg/2 consistency") + ctx + h + fpset([fps[n] for n in u2]) + fpset([fps[n] for n in u3])

# --- Shamir: a fixed degree-2 polynomial mod N at x = 1..5, with Feldman commitments
coeffs = [scalar("kat2 shamir a%d" % j) for j in range(3)]
shamir_points = [[x, b32(sum(c * pow(x, j, N) for j, c in enumerate(coeffs)) % N).hex()] for x in range(1, 6)]
commitments = u32(3) + b"".join(point(c) for c in coeffs)

json.dump(dict(
    description="secagg protocol 2 known-answer vectors, generated by scripts/gen-kat2.py",
    layout=layout, layout_digest=layout_digest.hex(),
    ctx=ctxp, ctx_encoding=ctx.hex(),
    adverts=adverts,
    share=dict(sender="u", receiver="v", receiver_x=xv, ecdh_x=x_shared.hex(), key_sender_to_receiver=k_uv.hex(),
               key_receiver_to_sender=k_vu.hex(), s_share=b32(s_share).hex(), b_share=b32(b_share).hex(),
               sealed=sealed.hex()),
    pairwise=dict(a="u", b="v", ecdh_x=pw_x.hex(), key=pairwise.hex(), keystream_64=ks64(pairwise).hex(),
                  u_adds=fps[u] < fps[v]),
    self_mask=dict(node="u", key=self_key.hex(), keystream_64=ks64(self_key).hex()),
    consistency=dict(u2=u2, u3=u3, advert_hash=h.hex(), message=consistency.hex()),
    shamir=dict(threshold=3, secret=b32(coeffs[0]).hex(), points=shamir_points, commitments=commitments.hex(),
                subsets=[list(c) for c in combinations(range(1, 6), 3)]),
), sys.stdout, indent=2)
print()
