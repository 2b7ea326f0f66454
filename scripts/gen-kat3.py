#!/usr/bin/env python3
"""Generate tests/data/kat3.json: known-answer vectors for right-sized residues (ring
width), mask folding at width w, masked file format version 3 with its segmented
BLAKE3 digest, and the input digests (version 1, and version 2 of whole .npy and
.safetensors files), from an implementation independent of secagg's Rust code: Python
'cryptography' for AES-128-CTR, ECDSA P-256 and SHA-256, and scripts/blake3_ref.py (a
pure-Python BLAKE3 checked against the official test vectors) for BLAKE3.

Run:  pip install cryptography
      python3 scripts/gen-kat3.py > tests/data/kat3.json      (about 15 s)

Follows docs/protocol.md ("Quantization and weights", "Masked file format (version 3)",
"Mask-reuse journal") step by step. Signatures are RFC 6979 deterministic where the installed 'cryptography'
supports it (then the output is reproducible byte for byte), randomised otherwise; the
Rust test only checks that they verify.
"""
import hashlib
import json
import os
import struct
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blake3_ref import blake3, self_test as blake3_self_test  # noqa: E402

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order

MAGIC = b"SECAGGM3"
HEADER_SIG_LABEL = b"secagg masked header v3"
FILE_DIGEST_LABEL = b"secagg masked file v3"
SEGMENT_ELEMENTS = 1 << 20


def u16le(x): return struct.pack("<H", x)
def u32le(x): return struct.pack("<I", x)
def u64le(x): return struct.pack("<Q", x)
def h(label): return hashlib.sha256(label.encode()).digest()


# --- Spec A: the ring width --------------------------------------------------------------

def width(bits, max_weight, nodes):
    """The smallest w in 1..=8 with n*M*L < 2^(8w-1) and n*M < 2^(8w); None if refused."""
    levels = 2 ** (bits - 1) - 1
    for w in range(1, 9):
        if nodes * max_weight * levels < 2 ** (8 * w - 1) and nodes * max_weight < 2 ** (8 * w):
            return w
    return None


def width_cases():
    cases = []
    seen = set()

    def add(bits, m, n, why):
        # Only knobs that Plan::new accepts for other reasons (bits 2..=32, M >= 1, n >= 2).
        if not (2 <= bits <= 32 and m >= 1 and n >= 2) or (bits, m, n) in seen:
            return
        seen.add((bits, m, n))
        cases.append(dict(bits=bits, max_weight=m, nodes=n, width=width(bits, m, n), why=why))

    for n in (2, 3, 10, 100, 1000, 10 ** 6):
        add(16, 10 ** 6, n, "defaults b=16, M=10^6")
    add(8, 1, 3, "b=8: 3*127 = 381 >= 2^7")
    add(8, 1, 2, "b=8: 2*127 = 254 >= 2^7")
    add(2, 1, 2, "b=2: 2 < 2^7")
    add(2, 1, 127, "b=2 (L=1): n*M*L = 2^7-1")
    add(2, 1, 128, "b=2 (L=1): n*M*L = 2^7")
    add(2, 1, 2 ** 15 - 1, "b=2 (L=1): n*M*L = 2^15-1")
    add(2, 1, 2 ** 15, "b=2 (L=1): n*M*L = 2^15")
    # Each byte boundary 2^(8w-1), from below (fits w bytes) and at it (needs w+1, or
    # is refused past 8), with three different L.
    for w in range(1, 9):
        k = 8 * w - 1
        add(2, 2 ** (k - 1) - 1, 2, "b=2, n=2: n*M*L = 2^%d - 2" % k)
        add(2, 2 ** (k - 1), 2, "b=2, n=2: n*M*L = 2^%d" % k)
        for bits, n in ((16, 2), (9, 3), (32, 2)):
            levels = 2 ** (bits - 1) - 1
            m = (2 ** k - 1) // (n * levels)  # the largest M that fits 2^k
            add(bits, m, n, "b=%d, n=%d: largest M under 2^%d" % (bits, n, k))
            add(bits, m + 1, n, "b=%d, n=%d: smallest M at or over 2^%d" % (bits, n, k))
    add(32, 2 ** 32, 2, "b=32, M=2^32, n=2: about 2^64, refused")
    add(16, 10 ** 6, 2 ** 40, "2^40 nodes at the defaults: refused")
    add(2, 2 ** 63, 2, "M = 2^63: refused")
    # The brief's arithmetic, checked.
    assert width(16, 10 ** 6, 10) == 5 and width(16, 10 ** 6, 2) == 5 and width(8, 1, 3) == 2
    for c in cases:
        n_m_l = c["nodes"] * c["max_weight"] * (2 ** (c["bits"] - 1) - 1)
        w = c["width"]
        assert w is None or n_m_l < 2 ** (8 * w - 1)
        assert w is None or w == 1 or n_m_l >= 2 ** (8 * w - 9)
    assert {c["width"] for c in cases} == set(range(1, 9)) | {None}
    return cases


# --- Spec A: mask folding --------------------------------------------------------------

def keystream(key, offset, n):
    """n bytes of AES-128-CTR(key, IV = 0, 128-bit big-endian counter) from byte offset."""
    enc = Cipher(algorithms.AES(key), modes.CTR((offset // 16).to_bytes(16, "big"))).encryptor()
    skip = offset % 16
    return enc.update(b"\0" * (skip + n))[skip:]


def keystream_ecb(key, offset, n):
    """The same keystream from AES-128 blocks E(key, counter), a second path for a check."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    first, last = offset // 16, (offset + n + 15) // 16
    blocks = enc.update(b"".join(i.to_bytes(16, "big") for i in range(first, last)))
    return blocks[offset - 16 * first:][:n]


def masks(key, w, start, count):
    """m_i = int.from_bytes(KS[w*i : w*i + w], "little") for i in start..start+count."""
    ks = keystream(key, w * start, w * count)
    assert ks == keystream_ecb(key, w * start, w * count)
    return [int.from_bytes(ks[w * j:w * j + w], "little") for j in range(count)]


def fold(w, start, xs, peers):
    mod = 2 ** (8 * w)
    ys = list(xs)
    for p in peers:
        m = masks(bytes.fromhex(p["key"]), w, start, len(xs))
        s = 1 if p["sign"] == "add" else -1
        ys = [(y + s * mi) % mod for y, mi in zip(ys, m)]
    return ys


def mask_key(label):
    return h("kat3 mask key " + label)[:16]


def fold_cases():
    specs = [  # (w, start, count, signs)
        (1, 0, 64, "+"),
        (2, 0, 33, "+-"),
        (3, 5, 20, "+--"),
        (4, 1000003, 17, "-+"),
        (5, 1000003, 64, "+-+"),
        (5, 0, 1, "-"),
        (6, 7, 10, "-"),
        (7, 123457, 40, "+-"),
        (8, 0, 16, "+"),
        (8, 1000003, 64, "+-+-"),
        # Long enough for whole groups of 64 from a multiple of 16 (the VAES kernel in
        # src/secagg/ctr_fold.rs), with a head before and a tail after them.
        (5, 0, 200, "+-+"),
        (5, 1000003, 300, "-+"),
        (3, 48, 150, "-+"),
        (8, 1000000, 130, "+-+-"),
        (1, 16, 100, "-"),
        (2, 0, 128, "+"),
        (4, 64, 70, "--"),
        (6, 999, 180, "+"),
        (7, 123457, 200, "+-"),
    ]
    cases = []
    for ci, (w, start, count, signs) in enumerate(specs):
        mod = 2 ** (8 * w)
        peers = [dict(key=mask_key("%d/%d" % (ci, pi)).hex(), sign="add" if s == "+" else "sub")
                 for pi, s in enumerate(signs)]
        xs = [int.from_bytes(h("kat3 x %d %d" % (ci, j)), "little") % mod for j in range(count)]
        # Edge values: 0, 1, the largest residue and the middle one.
        for j, x in enumerate([0, mod - 1, 1, mod // 2][:count]):
            xs[j] = x
        for p in peers:
            p["masks"] = masks(bytes.fromhex(p["key"]), w, start, count)
        cases.append(dict(width=w, start=start, count=count, keystream_offset=w * start,
                          peers=peers, x=xs, y=fold(w, start, xs, peers)))
    return cases


# --- Spec B: the segmented payload digest ----------------------------------------------

def payload_bytes(n):
    """Byte j is (j*31 + 7) mod 251."""
    period = bytes((j * 31 + 7) % 251 for j in range(251))
    return (period * (n // 251 + 1))[:n]


def segment_digests(payload, w):
    size = w * SEGMENT_ELEMENTS
    nseg = (len(payload) + size - 1) // size
    return [blake3(payload[j * size:(j + 1) * size]) for j in range(nseg)]


def digest_input(head_block, segs):
    return (FILE_DIGEST_LABEL + u64le(len(head_block)) + head_block
            + u64le(len(segs)) + b"".join(segs))


def file_digest(head_block, payload, w):
    return blake3(digest_input(head_block, segment_digests(payload, w)))


HEAD_BLOCK = bytes((i * 13 + 5) % 256 for i in range(200))


def digest_cases():
    cases = []
    for w, elements, why in [
        (5, 5, "small: one short segment"),
        (1, SEGMENT_ELEMENTS + 3, "two segments, the second 3 bytes"),
        (2, SEGMENT_ELEMENTS, "exactly one full segment (2 MiB)"),
        (1, 2 * SEGMENT_ELEMENTS, "exactly two full segments, no empty third"),
        (3, 2 * SEGMENT_ELEMENTS + 1000, "three segments, the last 3000 bytes"),
        (8, 1, "one element of 8 bytes"),
        (4, 0, "empty payload: nseg = 0 (no file has one: elements >= 1)"),
    ]:
        payload = payload_bytes(w * elements)
        segs = segment_digests(payload, w)
        d_in = digest_input(HEAD_BLOCK, segs)
        cases.append(dict(width=w, elements=elements, payload_len=len(payload), why=why,
                          head_block=HEAD_BLOCK.hex(), nseg=len(segs),
                          segments=[s.hex() for s in segs], digest_input=d_in.hex(),
                          digest=blake3(d_in).hex()))
    return cases


# --- Spec B: one complete masked file --------------------------------------------------

def ecdsa(prehashed=False):
    algo = Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
    try:
        return ec.ECDSA(algo, deterministic_signing=True)
    except TypeError:  # cryptography < 44: randomised signatures
        return ec.ECDSA(algo)


def masked_file():
    secret = int.from_bytes(h("secagg kat3 sender node_b"), "big") % N
    key = ec.derive_private_key(secret, ec.SECP256R1())
    public = key.public_key()
    quant = dict(clip=1.0, bits=16, max_weight=1000000)
    participants = ["node_a", "node_b", "node_c"]
    w = width(quant["bits"], quant["max_weight"], len(participants))
    assert w == 5
    layout = dict(container="npy", tensors=[dict(name="", shape=[2, 3], dtype="f32")])
    values = 6
    # Field order as serde writes src/files/masked.rs `Header` (context flattened).
    header = dict(format_version=3, federation="kat3-federation", round=7,
                  researcher=h("kat3 certificate researcher").hex(), participants=participants,
                  label="update", quant=quant, modulus="2^%d" % (8 * w), layout=layout,
                  elements=values + 1, sender="node_b")
    js = json.dumps(header, separators=(",", ":")).encode()
    head = MAGIC + u32le(len(js)) + js
    hsig = key.sign(HEADER_SIG_LABEL + head, ecdsa())
    head_block = head + u16le(len(hsig)) + hsig

    # Residues: weight * q mod 2^40 for six quantized values, then the weight, then two
    # peers' masks folded in (a real node's payload, with made-up keys).
    mod = 2 ** (8 * w)
    weight = 3
    q = [10923, -8192, 32767, -32767, 0, 33]
    unmasked = [(weight * x) % mod for x in q] + [weight]
    peers = [dict(key=mask_key("file peer node_a").hex(), sign="sub"),
             dict(key=mask_key("file peer node_c").hex(), sign="add")]
    residues = fold(w, 0, unmasked, peers)
    payload = b"".join(r.to_bytes(w, "little") for r in residues)
    segs = segment_digests(payload, w)
    d = file_digest(head_block, payload, w)
    sig = key.sign(d, ecdsa(prehashed=True))
    data = head_block + payload + u16le(len(sig)) + sig

    # Read it back as a verifier would.
    assert data[:8] == MAGIC
    jl = struct.unpack_from("<I", data, 8)[0]
    assert json.loads(data[12:12 + jl]) == header
    hl = struct.unpack_from("<H", data, 12 + jl)[0]
    hb = data[:14 + jl + hl]
    public.verify(data[14 + jl:14 + jl + hl], HEADER_SIG_LABEL + data[:12 + jl], ec.ECDSA(hashes.SHA256()))
    pl = data[len(hb):len(hb) + header["elements"] * w]
    sl = struct.unpack_from("<H", data, len(hb) + len(pl))[0]
    assert len(data) == len(hb) + len(pl) + 2 + sl
    public.verify(data[-sl:], file_digest(hb, pl, w), ec.ECDSA(Prehashed(hashes.SHA256())))

    pub = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return dict(secret=secret.to_bytes(32, "big").hex(), public_key=pub.hex(), width=w,
                header=header, header_json=js.decode(), head_block=head_block.hex(),
                header_signature=hsig.hex(), unmasked=unmasked, peers=peers, residues=residues,
                payload=payload.hex(), segments=[s.hex() for s in segs], digest=d.hex(),
                signature=sig.hex(), file=data.hex())


def input_digest_case():
    """The input digest (docs/protocol.md, "Mask-reuse journal"): SHA-256 over the label,
    the layout and every value as f64 little-endian (an f32 tensor's values as the f64 of
    their f32)."""
    tensors = [("a", 4, [3]), ("bb", 8, [2, 2])]
    values = [0.5, -1.0, 0.1, 1.25, -3.0e-5, 7.0, -0.0]
    m = b"secagg input v1"
    for name, dt, shape in tensors:
        m += struct.pack(">I", len(name)) + name.encode() + bytes([dt])
        m += struct.pack(">I", len(shape)) + b"".join(struct.pack(">Q", d) for d in shape)
    decoded = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values[:3]] + values[3:]
    m += b"".join(struct.pack("<d", v) for v in decoded)
    return dict(container="safetensors",
                tensors=[dict(name=n, dtype="f32" if dt == 4 else "f64", shape=sh)
                         for n, dt, sh in tensors],
                values=values, digested=m.hex(), digest=hashlib.sha256(m).hexdigest())


def digest_head(label, tensors):
    """The input digest's label and head: per tensor, in layout order, u32be(len(name)) ||
    name || dtype byte (4 or 8) || u32be(ndim) || u64be(dim)..."""
    m = label
    for name, dt, shape in tensors:
        m += struct.pack(">I", len(name)) + name.encode() + bytes([dt])
        m += struct.pack(">I", len(shape)) + b"".join(struct.pack(">Q", d) for d in shape)
    return m


def npy_file(fmt, shape, data):
    """A .npy (format 1.0) file as numpy writes it: magic, u16le header length, the header
    dict padded with spaces and a newline to a multiple of 64 bytes, then the data."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (fmt, tuple(shape))
    pad = 64 - (10 + len(text) + 1) % 64
    text = (text + " " * (pad % 64) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def input_digest_v2_case(container, tensors, values, file_order):
    """Digest version 2 of one file: BLAKE3 over "secagg input v2", the head, and every
    value little-endian in its own type, tensors in layout order (a .safetensors file's
    layout order is by name, whatever order its data sections are in); version 1 of the
    same file for a registry that holds version-1 releases."""
    fmt = {4: "<f", 8: "<d"}
    per = {}
    at = 0
    for name, dt, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        per[name] = b"".join(struct.pack(fmt[dt], v) for v in values[at:at + n])
        at += n
    assert at == len(values)
    layout = sorted(tensors, key=lambda t: t[0].encode())  # the layout's order
    data = b"".join(per[name] for name, _, _ in layout)
    if container == "npy":
        (name, dt, shape), = tensors
        assert name == ""
        file = npy_file({4: "<f4", 8: "<f8"}[dt], shape, per[name])
    else:
        header = {}
        off = 0
        for name in file_order:
            _, dt, shape = next(t for t in tensors if t[0] == name)
            header[name] = dict(dtype={4: "F32", 8: "F64"}[dt], shape=shape,
                                data_offsets=[off, off + len(per[name])])
            off += len(per[name])
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        file = struct.pack("<Q", len(text)) + text + b"".join(per[n] for n in file_order)
    m2 = digest_head(b"secagg input v2", layout) + data
    # Version 1: every value as the f64 of its stored value.
    widened = b""
    for name, dt, shape in layout:
        raw = per[name]
        xs = struct.unpack("<%d%s" % (len(raw) // dt, "f" if dt == 4 else "d"), raw)
        widened += b"".join(struct.pack("<d", x) for x in xs)
    m1 = digest_head(b"secagg input v1", layout) + widened
    return dict(container=container, file=file.hex(), digested=m2.hex(),
                digest=blake3(m2).hex(), digest_v1=hashlib.sha256(m1).hexdigest())


def large_bits(j):
    """Value j of the large case, as f32 bits: finite (exponent below 255), any sign."""
    return ((j * 2654435761 + 12345) % 2 ** 32) & 0xBFFFFFFF


def input_digest_v2_cases():
    tiny = [0.5, -0.0, 0.0, 1e-40, -3.4e38, 0.1, 1.0 / 3, 65504.0]
    npy_values = (tiny + [((j * 37) % 1001 - 500) / 64.0 for j in range(300 - len(tiny))])
    npy_values = [struct.unpack("<f", struct.pack("<f", v))[0] for v in npy_values]
    st_values = [-0.0, 0.1, 5e-324, -1.7976931348623157e308, 2.0 ** -1022, 1.0 / 3, 7.0]
    cases = [
        dict(why="npy f32, 300 values (two BLAKE3 chunks): -0.0, an f32 subnormal, -3.4e38",
             **input_digest_v2_case("npy", [("", 4, [3, 100])], npy_values, None)),
        dict(why="safetensors f64: tensors 'z' then 'a' in the file, 'a' first in the layout",
             **input_digest_v2_case("safetensors", [("z", 8, [3]), ("a", 8, [2, 2])],
                                    st_values[3:] + st_values[:3], ["z", "a"])),
    ]
    # A .npy f32 whose data crosses the reader's 2^20-byte blocks: the values are given by
    # large_bits, not spelled out.
    n = 300007
    data = b"".join(struct.pack("<I", large_bits(j)) for j in range(n))
    head = npy_file("<f4", [n], b"")
    m2 = digest_head(b"secagg input v2", [("", 4, [n])]) + data
    xs = struct.unpack("<%df" % n, data)
    m1 = digest_head(b"secagg input v1", [("", 4, [n])]) + b"".join(struct.pack("<d", x) for x in xs)
    cases.append(dict(why="npy f32, %d values (1.2 MB, crossing 2^20-byte read blocks); "
                          "value j has bits ((j * 2654435761 + 12345) mod 2^32) & 0xBFFFFFFF" % n,
                      container="npy", values=n, npy_header=head.hex(),
                      digest=blake3(m2).hex(), digest_v1=hashlib.sha256(m1).hexdigest()))
    return cases


def main():
    t0 = time.time()
    if blake3_self_test(verbose=False):
        sys.exit("blake3_ref.py fails the official test vectors")
    out = dict(
        description="secagg ring width, mask folding and masked file format v3 known-answer "
                    "vectors, generated by scripts/gen-kat3.py (Python cryptography; "
                    "scripts/blake3_ref.py for BLAKE3)",
        widths=width_cases(),
        folds=fold_cases(),
        digests_payload="payload byte j = (j*31 + 7) mod 251; segment = 2^20 elements",
        digests=digest_cases(),
        file=masked_file(),
        input_digest=input_digest_case(),
        input_digest_v2=input_digest_v2_cases(),
    )
    json.dump(out, sys.stdout, indent=2)
    print()
    print("gen-kat3.py: %.1f s" % (time.time() - t0), file=sys.stderr)


if __name__ == "__main__":
    main()
