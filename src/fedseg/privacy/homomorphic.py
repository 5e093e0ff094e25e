"""Homomorphic encryption of sites' updates (CKKS via TenSEAL): each site encrypts its (already
weighted) update, the coordinator adds the ciphertexts without the secret key, and the sites
decrypt the sum. Pure and transport-neutral: contexts and ciphertexts are ``bytes``.

Parameters, for sums only (no multiplication, so no rescaling or key switching):

- ``poly_modulus_degree`` 4096, the smallest that holds the precision: at 2048, 128-bit security
  allows 54 bits of modulus in all, too few for both the scale and the head room.
- Coefficient moduli (55, 30) bits: a ciphertext carries only the 55-bit data prime; the 30-bit
  special prime exists because TenSEAL refuses a single-prime chain. 85 bits in all, within
  SEAL's 109-bit bound for 128-bit security at this degree (SEAL checks it).
- Scale 2**45: the decrypted sum of 16 weighted vectors of typical magnitude 1e-3 is within about
  6e-8 of the float sum relative to its largest value (2 sites: about 1e-8), and sums up to
  ``2**(55 - 1 - 45)`` = 512 in magnitude decode; ``MAX_ABS_SUM`` (256) keeps half of that spare.
- Symmetric encryption: the sites hold the secret key anyway, and its fresh noise is ten times
  smaller than public-key encryption's. SEAL's seeded ciphertexts (half the size) are not reachable
  through TenSEAL's Python API (``Encryptor.encrypt_symmetric`` returns an unbound type), so each
  slot costs the two full polynomials: about 30 bytes per value after SEAL's zstd compression.
- Slots packed fully: 2048 values per ciphertext, one serialized ``CKKSVector`` per chunk.

Trust: the coordinator sees only ciphertexts and never the secret key (``add`` refuses a context
holding one). Every chunk from a site (to ``add``) or from the coordinator (to ``decrypt``) is
checked for count, type, size, parameters and slot count before use. A ciphertext made under a
foreign key with the same parameters cannot be told apart without the secret key; it decrypts to
values far beyond ``MAX_ABS_SUM`` (tens of thousands), which ``decrypt`` refuses.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tenseal as ts

from fedseg.errors import printable

POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (55, 30)
SCALE_BITS = 45
SLOTS = POLY_MODULUS_DEGREE // 2
"""Values per ciphertext (CKKS packs ``poly_modulus_degree / 2`` real values)."""
MAX_ABS_SUM = 256.0
"""The largest magnitude a vector, or the sum of the vectors, may have (decodable up to 512)."""
MAX_CHUNK_BYTES = 2 * POLY_MODULUS_DEGREE * 8 + 1024
"""Two polynomials of 64-bit words over the one data prime, plus headers: no legit chunk is larger."""
MAX_CONTEXT_BYTES = 1 << 20


class HEError(ValueError):
    """An input to encryption, the sum or decryption is unusable; ``site`` names who sent it."""

    def __init__(self, message: str, site: str | None = None):
        super().__init__(message)
        self.site = site


def make_keys() -> tuple[bytes, bytes]:
    """A fresh key: (secret context for the sites, public context for the coordinator), serialized.

    The public context holds the parameters only: it can add ciphertexts, not encrypt or decrypt."""
    context = _new_context()
    secret = context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                               save_relin_keys=False)
    public = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=False)
    return secret, public


def is_secret(context: bytes) -> bool:
    """Whether a serialized context holds the secret key."""
    return _load_context(context, "the context").is_private()


def chunk_count(length: int) -> int:
    """How many ciphertexts a vector of ``length`` values takes."""
    return math.ceil(length / SLOTS)


def encrypt(vector: np.ndarray, secret_context: bytes) -> list[bytes]:
    """``vector`` (1-D, finite, every |value| <= ``MAX_ABS_SUM``) as serialized CKKS chunks."""
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.size == 0:
        raise HEError(f"encrypt takes a non-empty 1-D numpy array, not {_describe(vector)}")
    if not (np.issubdtype(vector.dtype, np.floating) or np.issubdtype(vector.dtype, np.integer)):
        raise HEError(f"encrypt takes real numbers, not dtype {vector.dtype}")
    values = vector.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise HEError(f"refusing to encrypt {int(np.sum(~np.isfinite(values)))} non-finite value(s) (NaN or inf)")
    largest = float(np.max(np.abs(values)))
    if largest > MAX_ABS_SUM:
        raise HEError(f"refusing to encrypt a value of magnitude {largest:.3g}: CKKS sums here hold at most "
                      f"{MAX_ABS_SUM:g} (encrypt updates or weighted updates, not raw sums)")
    context = _load_context(secret_context, "the secret context")
    if not context.is_private():
        raise HEError("encrypt needs the secret context (a site kit's he_secret.tenseal), got a public one")
    # a list, not an array slice: TenSEAL converts lists a third faster
    return [ts.ckks_vector(context, values[i:i + SLOTS].tolist()).serialize() for i in range(0, values.size, SLOTS)]


class EncryptedSum:
    """The coordinator's running sum of the sites' encrypted vectors of ``length`` values: each site's
    chunks are checked in full when they arrive (a bad upload is that site's error, not the round's)."""

    def __init__(self, public_context: bytes, length: int):
        _check_length(length)
        self.context, self.length = _load_context(public_context, "the public context"), length
        if self.context.is_private():
            raise HEError("refusing a context that holds the secret key: the coordinator must only ever have "
                          "the public context (he_public.tenseal in its kit)")
        self.total: list[ts.CKKSVector] | None = None
        self.sites: list[str] = []

    def add(self, site: str, chunks: object) -> None:
        if not isinstance(site, str) or site in self.sites:
            raise HEError(f"site names must be distinct strings, not {_describe(site)}")
        vectors = _load_chunks(chunks, self.context, self.length, f"site '{printable(site)[:80]}'", site)
        self.total = vectors if self.total is None else [a.add_(b) for a, b in zip(self.total, vectors)]
        self.sites.append(site)

    def result(self) -> list[bytes]:
        if self.total is None:
            raise HEError("no encrypted vector was added")
        return [vector.serialize() for vector in self.total]


def add(ciphertexts: dict[str, list[bytes]], public_context: bytes, length: int) -> list[bytes]:
    """The coordinator's sum of the sites' encrypted vectors of ``length`` values, chunk by chunk.

    Each site is checked in full before it is added; the first bad one raises ``HEError`` naming it."""
    total = EncryptedSum(public_context, length)
    if not isinstance(ciphertexts, dict) or not ciphertexts:
        raise HEError(f"add takes a non-empty dict of site -> chunks, not {_describe(ciphertexts)}")
    for site, chunks in ciphertexts.items():
        total.add(site, chunks)
    return total.result()


def decrypt(summed: list[bytes], secret_context: bytes, length: int) -> np.ndarray:
    """The sum of ``length`` values (float64), decrypted with the secret context; ``summed`` comes
    from the coordinator and is checked like a site's upload."""
    _check_length(length)
    context = _load_context(secret_context, "the secret context")
    if not context.is_private():
        raise HEError("decrypt needs the secret context (a site kit's he_secret.tenseal), got a public one")
    vectors = _load_chunks(summed, context, length, "the coordinator's sum", "coordinator")
    values = np.concatenate([np.asarray(vector.decrypt(), dtype=np.float64) for vector in vectors])
    if not np.all(np.isfinite(values)) or float(np.max(np.abs(values))) > MAX_ABS_SUM:
        raise HEError(f"the decrypted sum is out of range (largest magnitude {np.max(np.abs(values)):.3g}, at most "
                      f"{MAX_ABS_SUM:g}): a site encrypted under another key, or the inputs summed past the "
                      "range; re-provision keys if a kit is foreign", "coordinator")
    return values


def _load_chunks(chunks: object, context: ts.Context, length: int, who: str, site: str) -> list[ts.CKKSVector]:
    expected = chunk_count(length)
    if not isinstance(chunks, list):
        raise HEError(f"{who} sent {_describe(chunks)} instead of a list of {expected} ciphertexts", site)
    if len(chunks) != expected:
        raise HEError(f"{who} sent {len(chunks)} ciphertext(s); {length} values take {expected}", site)
    vectors = []
    for index, chunk in enumerate(chunks):
        where = f"{who}, ciphertext {index}"
        if not isinstance(chunk, bytes):
            raise HEError(f"{where} is {_describe(chunk)}, not bytes", site)
        if not 0 < len(chunk) <= MAX_CHUNK_BYTES:
            raise HEError(f"{where} is {len(chunk)} bytes; a ciphertext here is 1 to {MAX_CHUNK_BYTES}", site)
        try:
            vector = ts.ckks_vector_from(context, chunk)
        except Exception as error:  # TenSEAL raises ValueError, RuntimeError or TypeError for bad bytes
            raise HEError(f"{where} is not a ciphertext of these parameters ({printable(error)[:120]})", site) from None
        slots = min(SLOTS, length - index * SLOTS)
        problem = _ciphertext_problem(vector, context, slots)
        if problem:
            raise HEError(f"{where}: {problem}", site)
        vectors.append(vector)
    return vectors


def _ciphertext_problem(vector: ts.CKKSVector, context: ts.Context, slots: int) -> str | None:
    parts = vector.data.ciphertext()
    if len(parts) != 1:
        return f"holds {len(parts)} ciphertexts, not 1"
    if vector.size() != slots:
        return f"holds {vector.size()} values, not {slots}"
    part = parts[0]
    if part.parms_id() != context.data.seal_context().first_parms_id() or part.size() != 2:
        return "has other parameters (another level or a product of ciphertexts)"
    if part.scale != 2.0 ** SCALE_BITS or not part.is_ntt_form() or part.is_transparent():
        return f"has scale 2**{math.log2(part.scale) if part.scale > 0 else float('nan'):.1f}, not 2**{SCALE_BITS}, " \
               "or is not a proper encryption"
    return None


def _load_context(data: object, what: str) -> ts.Context:
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_CONTEXT_BYTES:
        raise HEError(f"{what} must be the bytes of a TenSEAL context (at most {MAX_CONTEXT_BYTES} bytes), "
                      f"not {_describe(data)}")
    try:
        context = ts.context_from(data)
    except Exception as error:
        raise HEError(f"{what} is not a TenSEAL context ({printable(error)[:120]})") from None
    if (tuple(context.data.seal_context().first_parms_id()) != _reference_parms_id()
            or context.global_scale != 2.0 ** SCALE_BITS):
        raise HEError(f"{what} has other CKKS parameters than fedseg's (degree {POLY_MODULUS_DEGREE}, moduli "
                      f"{COEFF_MOD_BIT_SIZES} bits, scale 2**{SCALE_BITS}); re-provision the keys with fedseg")
    return context


def _new_context() -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_MODULUS_DEGREE,
                         coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES), encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    context.global_scale = 2.0 ** SCALE_BITS
    return context


@functools.cache
def _reference_parms_id() -> tuple[int, ...]:
    """The fingerprint of the parameters (SEAL picks the same primes for the same bit sizes)."""
    return tuple(_new_context().data.seal_context().first_parms_id())


def _check_length(length: object) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise HEError(f"length must be a positive integer, not {_describe(length)}")


def _describe(value: object) -> str:
    return f"{type(value).__name__} {printable(repr(value))[:60]}" if isinstance(value, (int, float, str)) \
        else type(value).__name__
