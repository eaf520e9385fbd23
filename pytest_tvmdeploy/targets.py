"""Targets: what the user wrote (``llvm -mcpu=znver4``, JSON) → one canonical :class:`TargetSpec`."""

from __future__ import annotations

import json
import platform
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.errors import TargetError, brief

if TYPE_CHECKING:
    import tvm

#: The target used when neither ``--tvm-target`` nor the ``tvm_target`` ini option is given.
DEFAULT_TARGET = "llvm"


@dataclass(frozen=True)
class TargetSpec:
    """A target as the user wrote it, normalised to TVM's JSON/dict form.

    ``as_dict`` is the dict given to ``tvm.target.Target``; ``label`` is a short,
    id-safe name used in test ids and folder names (``llvm``, ``llvm-znver4``).
    """

    json: str  # canonical: sorted keys, so equal targets compare and hash equal
    label: str

    @property
    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.json)

    @property
    def architecture(self) -> str | None:
        """The CPU architecture named by ``mtriple`` (``aarch64``, ``x86_64``), or ``None`` (the host's)."""
        triple = self.as_dict.get("mtriple")
        return str(triple).split("-")[0] if triple else None

    @property
    def runs_here(self) -> bool:
        """Whether code built for this target can run on this machine (CPU targets only)."""
        arch = self.architecture
        return arch is None or _same_architecture(arch, platform.machine())

    def to_tvm(self) -> tvm.target.Target:
        """The ``tvm.target.Target`` (raises :class:`TargetError` if TVM rejects it)."""
        import tvm

        try:
            return tvm.target.Target(self.as_dict)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"target {self.json}: TVM rejects it: {brief(exc)}") from exc


def parse_target(text: str | dict[str, Any]) -> TargetSpec:
    """Parse ``llvm``, ``llvm -mcpu=znver4`` or a JSON/dict target into a :class:`TargetSpec`.

    TVM 0.27 only accepts the dict form; the ``kind -key=value`` form is translated here.
    """
    if isinstance(text, dict):
        config = dict(text)
    else:
        stripped = text.strip()
        if not stripped:
            raise TargetError("target: empty string")
        if stripped.startswith("{"):
            try:
                config = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise TargetError(f"target {stripped!r}: invalid JSON: {exc}") from exc
        else:
            config = _parse_cli_form(stripped)
    if not isinstance(config, dict) or "kind" not in config:
        raise TargetError(f"target {text!r}: needs a 'kind' (e.g. llvm)")
    try:
        canonical = json.dumps(config, sort_keys=True)
    except TypeError as exc:
        raise TargetError(f"target {text!r}: not JSON-serialisable: {exc}") from exc
    return TargetSpec(canonical, _label(config))


def _parse_cli_form(text: str) -> dict[str, Any]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise TargetError(f"target {text!r}: {exc}") from exc
    config: dict[str, Any] = {"kind": words[0]}
    for word in words[1:]:
        match = re.fullmatch(r"-{1,2}([A-Za-z_][\w-]*)(?:=(.*))?", word)
        if not match:
            raise TargetError(f"target {text!r}: cannot read option {word!r} (expected -key=value)")
        key, value = match.group(1), match.group(2)
        if value is None:
            config[key] = True
        elif key in ("mattr", "keys", "libs"):
            config[key] = value.split(",")
        else:
            config[key] = value
    return config


def _label(config: dict[str, Any]) -> str:
    parts = [str(config["kind"])]
    for key in ("mcpu", "mtriple", "device"):
        if key in config:
            parts.append(str(config[key]))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x86-64": "x86_64"}


def _same_architecture(a: str, b: str) -> bool:
    return _ARCH_ALIASES.get(a.lower(), a.lower()) == _ARCH_ALIASES.get(b.lower(), b.lower())
