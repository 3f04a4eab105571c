"""The one base class of bioviz's errors: what a user did or gave that bioviz cannot use,
said so that the user can act (the file, column or parameter, and what was expected). The
command line prints these messages alone; anything else is a bug and keeps its traceback."""


class BiovizError(Exception):
    """Base class of every error bioviz raises about its input."""


class InputError(BiovizError, ValueError):
    """A file, table, column or parameter that is not what bioviz expects."""


def positive_int(value, name: str) -> int:
    """``value`` as an int when it is a positive integer (not a bool), else an InputError
    naming the parameter."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
