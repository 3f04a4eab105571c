"""Capture what named modules of any torch model compute, without the model's cooperation.

Layers are chosen by exact module name or glob pattern (``bert.encoder.layer.*``,
``swinViT.layers3``), as in sparsify. In a pattern ``*`` and ``?`` stay inside one dotted
name part (``encoder.layer.*`` is the layers, not their submodules) and ``**`` crosses
dots (``**.attention``). Hooks are removed on every exit path.

Output rule (documented, applied to whatever a module returns or receives):
  * a tensor is taken as is;
  * a tuple or list: its first tensor element (HF layers return ``(hidden_states, attn, ...)``);
  * a dict or ``ModelOutput``: ``last_hidden_state`` if present, else ``hidden_states`` if it
    is a tensor, else its first tensor value.
Pass ``select=`` (an int index or a key) to pick something else.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from .errors import InputError

_GLOB_CHARS = set("*?[")


def resolve_layers(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Module names matched by ``patterns`` (exact names or globs), in model order.

    Parameters
    ----------
    model
        Any torch module.
    patterns
        Module names or glob patterns: ``*`` and ``?`` stay inside one dotted part, ``**``
        crosses dots.

    Returns
    -------
    list of str
        The matched names, in the order of ``model.named_modules()``.

    Raises
    ------
    ValueError
        A pattern matches nothing; the message lists the closest module names.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> resolve_layers(model, "1.*")
    ['1.0', '1.1']
    >>> resolve_layers(model, "*")
    ['0', '1']
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise InputError("layers: give at least one module name or glob pattern")
    names = [n for n, _ in model.named_modules() if n]
    chosen: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise InputError(f"layers: {pat!r} is not a module name or glob pattern")
        if _GLOB_CHARS & set(pat):
            rx = _glob_regex(pat)
            hits = [n for n in names if rx.fullmatch(n)]
        else:
            hits = [n for n in names if n == pat]
        if not hits:
            close = difflib.get_close_matches(pat, names, n=5, cutoff=0.4)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise InputError(
                f"layer {pat!r} matches no module of {type(model).__name__}{hint}. "
                f"List names with bioviz.hooks.layer_names(model)."
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def layer_names(model: nn.Module, max_depth: int | None = None) -> list[str]:
    """Every hookable module name, optionally only those at most ``max_depth`` parts deep.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> layer_names(model)
    ['0', '1', '1.0', '1.1']
    >>> layer_names(model, max_depth=1)
    ['0', '1']
    """
    return [
        n
        for n, _ in model.named_modules()
        if n and (max_depth is None or n.count(".") < max_depth)
    ]


def select_tensor(value, select: int | str | None = None) -> torch.Tensor:
    """Apply the output rule in this module's docstring."""
    if select is not None:
        value = value[select]
        if isinstance(value, torch.Tensor):
            return value
        raise TypeError(f"select={select!r} picked a {type(value).__name__}, not a tensor")
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    elif isinstance(value, Mapping):
        for key in ("last_hidden_state", "hidden_states"):
            if isinstance(value.get(key), torch.Tensor):
                return value[key]
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(
        f"cannot find a tensor in a module output of type {type(value).__name__}; "
        "pass select=<index or key>"
    )


class Capture:
    """Holds the tensors captured during one forward pass; ``pop()`` hands them over."""

    def __init__(self, names: list[str]):
        self.names = names
        self._data: dict[str, torch.Tensor] = {}

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        # detach so no autograd graph (and so no input batch) is kept alive through us
        self._data[name] = tensor.detach()

    def pop(self) -> dict[str, torch.Tensor]:
        """The captured tensors, by layer name; the capture keeps no reference afterwards."""
        missing = [n for n in self.names if n not in self._data]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in this forward pass; check the model's inputs"
            )
        data, self._data = self._data, {}
        return data

    def clear(self) -> None:
        self._data = {}


def replace_tensor(value, new: torch.Tensor, select: int | str | None = None):
    """``value`` with the tensor that :func:`select_tensor` picks swapped for ``new``
    (tuples, lists, dicts and ModelOutputs keep their other entries)."""
    old = select_tensor(value, select)
    if value is old:
        return new
    if isinstance(value, (tuple, list)):
        items = [new if v is old else v for v in value]
        return type(value)(items) if isinstance(value, list) else tuple(items)
    if isinstance(value, Mapping):
        out = copy.copy(value)  # ModelOutput subclasses keep their type
        for k, v in value.items():
            if v is old:
                out[k] = new
        return out
    raise TypeError(f"cannot replace a tensor inside a {type(value).__name__}")


@contextmanager
def patch(model: nn.Module, layer: str, fn, *, select: int | str | None = None):
    """Context manager: while active, ``layer``'s output tensor ``t`` is replaced by
    ``fn(t)`` (splicing an SAE reconstruction or an ablation into the model).

    Parameters
    ----------
    model
        Any torch module.
    layer
        One module name (or a pattern matching exactly one).
    fn
        Called with the layer's output tensor; returns the replacement (same shape).
    select
        Which tensor of a tuple/dict output to replace (see the output rule above).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    >>> with patch(model, "0", lambda t: torch.zeros_like(t)):
    ...     model(torch.randn(2, 3)).abs().sum().item()
    0.0
    """
    names = resolve_layers(model, layer)
    if len(names) != 1:
        raise InputError(f"patch needs exactly one layer; {layer!r} matches {names}")
    module = dict(model.named_modules())[names[0]]

    def hook(_m, _args, output):
        return replace_tensor(output, fn(select_tensor(output, select)), select)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture(
    model: nn.Module,
    layers: str | Iterable[str],
    *,
    inputs: bool = False,
    select: int | str | None = None,
):
    """Context manager: hook ``layers`` of ``model`` and yield a :class:`Capture`.

    Parameters
    ----------
    model
        Any torch module; it needs no cooperation.
    layers
        Module names or glob patterns.
    inputs
        Capture what each module receives instead of what it returns.
    select
        Index or key picking the tensor of a tuple/dict output (see the output rule above).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with capture(model, ["0", "2"]) as cap:
    ...     _ = model(torch.randn(5, 3))
    ...     acts = cap.pop()
    >>> {name: tuple(t.shape) for name, t in acts.items()}
    {'0': (5, 4), '2': (5, 2)}
    """
    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    cap = Capture(names)
    handles = []
    try:
        for name in names:
            if inputs:

                def pre_hook(_m, args, kwargs, _name=name):
                    value = args if args else tuple(kwargs.values())
                    cap._put(_name, select_tensor(value, select))

                handles.append(modules[name].register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def hook(_m, _args, output, _name=name):
                    cap._put(_name, select_tensor(output, select))

                handles.append(modules[name].register_forward_hook(hook))
        yield cap
    finally:
        for h in handles:
            h.remove()
        cap.clear()


@contextmanager
def hooked(
    model: nn.Module,
    layers: str | Iterable[str] = (),
    *,
    inputs: bool = False,
    select: int | str | None = None,
    splice: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
):
    """Context manager: :func:`patch` every ``{layer: fn}`` of ``splice``, then
    :func:`capture` ``layers`` (so a layer both spliced and captured is seen spliced).
    Yields the :class:`Capture` (empty when no layers are named). The building block of
    :meth:`bioviz.adapter.Adapter.run`."""
    with ExitStack() as stack:
        for layer, fn in (splice or {}).items():
            stack.enter_context(patch(model, layer, fn, select=select))
        names = [layers] if isinstance(layers, str) else list(layers)
        if names:
            yield stack.enter_context(capture(model, names, inputs=inputs, select=select))
        else:
            yield Capture([])
