"""The one base class of bioviz's errors: what a user did or gave that bioviz cannot use,
said so that the user can act (the file, column or parameter, and what was expected). The
command line prints these messages alone; anything else is a bug and keeps its traceback."""


class BiovizError(Exception):
    """Base class of every error bioviz raises about its input."""


class InputError(BiovizError, ValueError):
    """A file, table, column or parameter that is not what bioviz expects."""
