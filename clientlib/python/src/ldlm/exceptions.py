"""The exceptions under the module name py-ldlm used (``ldlm.exceptions``),
so that ``from ldlm.exceptions import LockWaitTimeoutError`` keeps working.

``BaseLDLMException`` is :class:`~ldlm.LDLMError`, the base of every error of
this package. ``LockDoesNotExistOrInvalidKeyError`` is the base of
``InvalidLockKeyError`` and ``LockDoesNotExistError``. Note that a wait that
times out is not an exception here (``lock()`` returns a falsy lock), as in
py-ldlm, whose ``lock()`` also returned ``locked=False``.
"""

from .errors import *  # noqa: F401,F403
from .errors import LDLMError as BaseLDLMException  # noqa: F401
from .errors import __all__ as _errors_all

__all__ = [*_errors_all, "BaseLDLMException"]
