"""The one base of every exception ``coordinators/`` raises on purpose.

Why: a caller (the ``milvus`` command, a test, an embedding program) can tell our errors from a bug
with one ``except CoordinatorError``; each subclass still says what went wrong. The session
library keeps its own base (:class:`session.errors.SessionError`): it does not depend on this package.
"""

from __future__ import annotations

__all__ = ["CoordinatorError"]


class CoordinatorError(Exception):
    """Base of the suite's own errors outside the session library."""
