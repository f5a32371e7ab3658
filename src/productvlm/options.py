"""Command-line options built from a stage's config: every option is declared once, as a field.

A stage's command is declared with :func:`config_command`: each field of its
:class:`~productvlm.config.StageConfig` becomes an option (``batch_size`` -> ``--batch-size``),
whose help is the field's description and whose shown default is the field's default, so the
help can never drift from the config. bool fields are ``--x/--no-x``, Literal fields are
choices, dict fields are repeated ``--map KEY=VALUE`` options, and a sub-model named in
``expand`` (prepare's ``fetch:``) gives one flat option per field of its own. What a command
has besides its config (a positional catalog, ``--out`` of prepare, ``--set``) is declared
as usual, in the function's own signature, beside the command; a parameter named like a
field (predict's positional ``images``) feeds that field and gets its description as help.

Only the flags a user typed reach :func:`~productvlm.config.resolve_config` (every generated
option defaults to None), so defaults < YAML file < flags holds. The function receives any of
``cfg`` (the resolved config), ``given`` (the typed flags, for commands that resolve
themselves) and ``config_file`` (``--config``), by naming them.

>>> def register(app):  # doctest: +SKIP
...     @config_command(app, "predict", PredictConfig, section="predict",
...                     flags={"model": Flag("--model", "-m")})
...     def predict_command(cfg: PredictConfig) -> None:
...         predict_files(cfg)
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
import typing
from collections.abc import Callable, Iterator
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typer.models import ParameterInfo

from productvlm.config import StageConfig, parse_pairs, resolve_config

#: what a command function may ask for by name, besides its own options
INJECTED = ("cfg", "given", "config_file")




@dataclass(frozen=True)
class Flag:
    """How one field's option is spelled when not ``--field-name``: its names (a bool's
    ``--x`` alone makes a one-way flag), and an environment variable that may set it.

    >>> Flag("--model", "-m").decls
    ('--model', '-m')
    """

    decls: tuple[str, ...] = ()
    envvar: str | None = None

    def __init__(self, *decls: str, envvar: str | None = None) -> None:
        object.__setattr__(self, "decls", decls)
        object.__setattr__(self, "envvar", envvar)


@dataclass(frozen=True)
class FieldOption:
    """One config field as a command-line option: its dotted key (``fetch.timeout_s``), the
    field, the Python parameter it arrives in, and how a typed value becomes the field's."""

    key: str
    info: FieldInfo
    param: str
    decls: tuple[str, ...]
    convert: Callable[[Any], Any] = field(repr=False)


#: command name -> its config class and the options made from it (a test holds every one's
#: help to its field's description)
REGISTERED: dict[str, tuple[type[StageConfig], list[FieldOption]]] = {}


def field_options(cls: type[BaseModel], expand: tuple[str, ...] = (),
                  flags: dict[str, Flag] | None = None, skip: frozenset[str] = frozenset(),
                  ) -> Iterator[FieldOption]:
    """Each field of ``cls`` as an option (its own fields, then those of the classes it
    derives from, each in declaration order); a sub-model named in
    ``expand`` gives its own fields instead (keys ``name.sub``, flags ``--sub``).

    >>> [o.decls for o in field_options(FetchConfig)][:2]  # doctest: +SKIP
    [('--concurrency',), ('--per-host',)]
    """
    flags = flags or {}
    # the class's own fields first, then those it shares by deriving from another config
    declared = vars(cls).get("__annotations__", {})
    ordered = sorted(cls.model_fields.items(), key=lambda kv: kv[0] not in declared)
    for name, info in ordered:
        if name in skip:
            continue
        if name in expand:
            sub = info.annotation
            assert isinstance(sub, type) and issubclass(sub, BaseModel), name
            for opt in field_options(sub, flags={k.removeprefix(f"{name}."): v
                                                 for k, v in flags.items()}):
                yield FieldOption(f"{name}.{opt.key}", opt.info, f"{name}__{opt.param}",
                                  opt.decls, opt.convert)
            continue
        flag = flags.get(name, Flag())
        dashed = "--" + name.replace("_", "-")
        decls = flag.decls or ((f"{dashed}/--no-{name.replace('_', '-')}",)
                               if _is_bool(info.annotation) else (dashed,))
        convert: Callable[[Any], Any] = (functools.partial(_pairs, flag=decls[0])
                                         if _is_dict(info.annotation) else _same)
        yield FieldOption(name, info, name, decls, convert)


def config_command(app: typer.Typer, name: str, cls: type[StageConfig], *, section: str,
                   flags: dict[str, Flag] | None = None, expand: tuple[str, ...] = (),
                   **command_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as command ``name`` of ``app``, with one option per
    field of ``cls`` (see the module doc) and ``--config/-c FILE`` (the file's ``section:``
    mapping, or the whole file). ``flags`` spells options other than ``--field-name``
    (dotted keys for expanded sub-models); ``command_kwargs`` go to ``app.command``.
    """
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p for p in inspect.signature(fn).parameters.values() if p.name not in INJECTED]
        wants = [p for p in inspect.signature(fn).parameters if p in INJECTED]
        fed = [p.name for p in own if p.name in cls.model_fields]  # own params that are fields
        generated = list(field_options(cls, expand, flags, frozenset(fed)))
        params = [_own_param(p, hints, cls) for p in own]
        params.append(inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Path | None, typer.Option(
                "--config", "-c", help=f"YAML config: its {section}: section, or the whole "
                "file; the flags given override it")]))
        params += [_generated_param(opt, (flags or {}).get(opt.key, Flag()))
                   for opt in generated]

        def command(**kwargs: Any) -> Any:
            given: dict[str, Any] = {}
            for opt in generated:
                value = kwargs.pop(opt.param)
                if value is not None and value != [] and value != ():
                    _put(given, opt.key.split("."), opt.convert(value))
            for name_ in fed:
                if kwargs[name_] is not None:
                    given[name_] = kwargs[name_]
            config_file = kwargs.pop("config")
            injected = {"given": given, "config_file": config_file}
            if "cfg" in wants:
                injected["cfg"] = resolve_config(cls, config_file, given, section=section)
            return fn(**kwargs, **{k: injected[k] for k in wants})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        REGISTERED[name] = (cls, generated)
        app.command(name, **command_kwargs)(command)
        return fn

    return decorate


def _own_param(p: inspect.Parameter, hints: dict[str, Any],
               cls: type[StageConfig]) -> inspect.Parameter:
    """A parameter the function declares itself, keyword-only; one named like a field gets
    the field's description as help when it has none."""
    default = p.default
    info = cls.model_fields.get(p.name)
    if info is not None and isinstance(default, ParameterInfo) and not default.help:
        default = copy(default)
        default.help = info.description
    return p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=default,
                     annotation=hints.get(p.name, p.annotation))


def _generated_param(opt: FieldOption, flag: Flag) -> inspect.Parameter:
    """The keyword-only parameter (default None: not typed) of one field's option."""
    ann = _unwrap(opt.info.annotation)
    kwargs: dict[str, Any] = {"help": opt.info.description or "",
                              "show_default": _shown_default(opt)}
    if flag.envvar:
        kwargs["envvar"] = flag.envvar
    if _is_bool(opt.info.annotation):
        py: Any = bool
    elif _is_dict(opt.info.annotation):
        py, kwargs["metavar"] = list[str], "KEY=VALUE"
    elif typing.get_origin(ann) in (list, tuple, set):
        py = list[str]
    elif (choices := _choices(ann)) is not None:
        py = Literal[tuple(choices)]  # typer offers a Literal's values as choices
    elif ann in (int, float, str, Path):
        py = ann
    else:  # unions such as int | "auto": the config validates the text
        py = str
    return inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[py | None, typer.Option(*opt.decls,
                                                                          **kwargs)])


def _shown_default(opt: FieldOption) -> str | bool:
    """The field's default as the help shows it (False: none shown)."""
    default = opt.info.default
    if default is PydanticUndefined or default is None or opt.info.default_factory:
        return False
    if isinstance(default, bool):
        return ("on" if default else "off") if "/" in opt.decls[0] else False
    text = str(default)
    return text if text else False


def _unwrap(ann: Any) -> Any:
    """``ann`` without Annotated metadata and without its None member."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else functools.reduce(operator.or_, members)
    return ann


def _is_bool(ann: Any) -> bool:
    return _unwrap(ann) is bool


def _is_dict(ann: Any) -> bool:
    ann = _unwrap(ann)
    return ann is dict or typing.get_origin(ann) is dict


def _choices(ann: Any) -> list[str] | None:
    """The values of a Literal (or a union of Literals and bool: ``true``/``false`` too),
    else None."""
    members = (typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType)
               else (ann,))
    values: list[str] = []
    for member in members:
        member = _unwrap(member)
        if typing.get_origin(member) is Literal:
            values += [str(v) for v in typing.get_args(member)]
        elif member is bool and len(members) > 1:
            values += ["true", "false"]
        else:
            return None
    return values


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    return parse_pairs(list(values), flag)


def _same(value: Any) -> Any:
    return value


def _put(given: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        given = given.setdefault(part, {})
    given[path[-1]] = value


__all__ = ["REGISTERED", "FieldOption", "Flag", "config_command", "field_options"]
