"""One run's secure-aggregation settings: the float path and the pre-encoded mode.

:func:`make_config` validates a run that clips, quantizes and weights float updates
(:mod:`~.quantize`); :func:`make_encoded_config` one that masks vectors the silos already
encoded (:mod:`~.encoded`, e.g. distributed-DP shares). Both give a :class:`SecAggConfig`,
which travels in every KeyRequest so both sides agree for the whole run. Every bad value is
a :class:`~xsilo.errors.ConfigError` naming it and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from strategies.secagg.aux import MAX_AUX_LENGTH, MAX_AUX_SILOS
from strategies.secagg.quantize import QuantParams, make_quant_params
from xsilo.errors import ConfigError

__all__ = ["SecAggConfig", "make_config", "make_encoded_config"]

_MAX_ID = (1 << 63) - 1  # silo ids travel as ConfigRecord ints (signed 64-bit)
MIN_BITS, MAX_BITS = 2, 64  # moduli of a pre-encoded vector


@dataclass(frozen=True)
class SecAggConfig:
    """One run's secure-aggregation settings; ``roster`` is sorted, Shamir ``x = index + 1``."""

    run_id: str
    roster: tuple[int, ...]
    threshold: int
    length: int
    quant: QuantParams
    encoded: bool = False  # pre-encoded mode (strategies.secagg.encoded): mask given integers
    aux_length: int = 0  # statistics summed beside the update (strategies.secagg.aux)
    # Round keys (docs/secure-aggregation.md, *Round keys*): each round starts with a
    # dealing round trip in which every silo shares a fresh masking key and its self-mask
    # seed; its dealing is O(n·t) instead of O(n²·t), for one more round trip.
    round_keys: bool = False

    def x_of(self, silo: int) -> int:
        return self.roster.index(silo) + 1


def make_config(*, run_id: str, roster: list[int] | tuple[int, ...], threshold: int, length: int,
                clip: float, bits: int, max_weight: int,
                modulus_bits: int | None = None, aux_length: int = 0,
                round_keys: bool = False) -> SecAggConfig:
    """Validate and build a :class:`SecAggConfig` (ConfigError names the bad value and the fix)."""
    ids = sorted(roster)
    if len(set(ids)) != len(ids) or any(not isinstance(s, int) or not 0 <= s <= _MAX_ID for s in ids):
        raise ConfigError(f"roster must be distinct integers in 0..2^63-1, got {list(roster)}")
    if not isinstance(threshold, int) or not 2 <= threshold <= len(ids):
        raise ConfigError(f"threshold must be in 2..{len(ids)} (the number of silos), got "
                          f"{threshold!r}; n//2 + 1 = {len(ids) // 2 + 1} is a common choice")
    if not isinstance(length, int) or length < 1:
        raise ConfigError(f"length (number of model parameters) must be ≥ 1, got {length!r}")
    if not run_id:
        raise ConfigError("run_id must be a non-empty string")
    if isinstance(aux_length, bool) or not isinstance(aux_length, int) or not (
            0 <= aux_length <= MAX_AUX_LENGTH):
        raise ConfigError(f"aux_length must be an integer in 0..{MAX_AUX_LENGTH}, got "
                          f"{aux_length!r}")
    if aux_length and len(ids) > MAX_AUX_SILOS:
        raise ConfigError(f"an auxiliary sum over {len(ids)} silos could wrap; at most "
                          f"{MAX_AUX_SILOS} silos")
    quant = make_quant_params(num_silos=len(ids), clip=clip, bits=bits, max_weight=max_weight,
                              modulus_bits=modulus_bits)
    return SecAggConfig(run_id=run_id, roster=tuple(ids), threshold=threshold, length=length,
                        quant=quant, aux_length=aux_length, round_keys=bool(round_keys))


def make_encoded_config(*, run_id: str, roster: list[int] | tuple[int, ...], threshold: int,
                        length: int, modulus_bits: int, aux_length: int = 0,
                        round_keys: bool = False) -> SecAggConfig:
    """A run that masks pre-encoded ``length``-word vectors modulo ``2^modulus_bits``.

    Raises
    ------
    ConfigError
        Bad roster, threshold or length (as :func:`~.messages.make_config`), or a modulus
        outside ``2^2..2^64`` or too small to count the silos in the weight word.
    """
    if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int) or not (
            MIN_BITS <= modulus_bits <= MAX_BITS):
        raise ConfigError(f"modulus_bits of a pre-encoded vector must be an integer in "
                          f"{MIN_BITS}..{MAX_BITS}, got {modulus_bits!r}; use the encoder's "
                          "modulus (e.g. dp.modulus_bits)")
    # Roster, threshold and length are validated exactly as on the float path.
    base = make_config(run_id=run_id, roster=roster, threshold=threshold, length=length,
                       clip=1.0, bits=1, max_weight=1, aux_length=aux_length,
                       round_keys=round_keys)
    n = len(base.roster)
    if n >= 1 << modulus_bits:
        raise ConfigError(f"modulus 2^{modulus_bits} cannot count {n} silos in the weight word; "
                          f"raise modulus_bits to ≥ {n.bit_length() + 1}")
    # clip = 0 makes the float-path step and error bounds 0: masking adds no error here.
    quant = QuantParams(num_silos=n, clip=0.0, bits=modulus_bits, max_weight=1,
                        modulus_bits=modulus_bits)
    return replace(base, quant=quant, encoded=True)
