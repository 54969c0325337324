"""Version hashes of workflow bodies, and the registry of loaded versions.

Workflow bodies are written to real modules under ``tmp_path`` and imported,
so ``inspect.getsource`` reads them as it would in a worker.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import pickle
import re
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from continuum_celery import versioning
from continuum_celery.errors import DefinitionError, UnknownVersion, UnknownWorkflow
from continuum_celery.hashing import version_hash
from continuum_celery.versioning import Registry

PRELUDE = """\
import functools


def deco(fn):
    return fn


def wrap(fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        return fn(*args, **kwargs)

    return inner

"""

BASE = '''
def flow(ctx, order_id):
    """Charge and ship an order."""
    total = ctx.run(price, order_id) * 2
    if total > 100:
        ctx.run(notify, order_id, channel="email")
    return total
'''

Loader = Callable[[str], ModuleType]


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Loader]:
    """Write ``PRELUDE + source`` to a fresh module file and import it."""
    counter = itertools.count()

    def _load(source: str) -> ModuleType:
        name = f"versioning_case_{next(counter)}"
        path = tmp_path / f"{name}.py"
        path.write_text(PRELUDE + textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield _load


def hash_of(load: Loader, source: str, version: int = 1, attr: str = "flow") -> str:
    return version_hash(getattr(load(source), attr), version)


def exec_function(source: str, name: str = "flow", module: str = "generated") -> Any:
    """Define a function with ``exec``, so that it has no readable source."""
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile(textwrap.dedent(source), "<generated>", "exec"), namespace)
    return namespace[name]


# --- version_hash: what must not change it ---------------------------------

SAME_BODY = {
    "reindented": """
        def flow(ctx, order_id):
          total = ctx.run(price, order_id) * 2
          if total > 100:
            ctx.run(notify, order_id, channel="email")
          return total
        """,
    "blank lines and comments": '''
        def flow(ctx, order_id):  # the order workflow
            """Charge and ship an order."""

            # price it first
            total = ctx.run(price, order_id) * 2


            if total > 100:  # big orders get an email
                ctx.run(notify, order_id, channel="email")
            return total
        ''',
    "docstring changed": '''
        def flow(ctx, order_id):
            """Price an order, then tell the customer.

            A longer description that says nothing new.
            """
            total = ctx.run(price, order_id) * 2
            if total > 100:
                ctx.run(notify, order_id, channel="email")
            return total
        ''',
    "docstring removed": """
        def flow(ctx, order_id):
            total = ctx.run(price, order_id) * 2
            if total > 100:
                ctx.run(notify, order_id, channel="email")
            return total
        """,
    "line breaks, quotes and a trailing comma": """
        def flow(
            ctx,
            order_id,
        ):
            total = (
                ctx.run(price, order_id)
                * 2
            )
            if total > 100:
                ctx.run(
                    notify,
                    order_id,
                    channel='email',
                )
            return total
        """,
    "indented inside a block": """
        if True:
            def flow(ctx, order_id):
                total = ctx.run(price, order_id) * 2
                if total > 100:
                    ctx.run(notify, order_id, channel="email")
                return total
        """,
    "decorated": """
        @deco
        def flow(ctx, order_id):
            total = ctx.run(price, order_id) * 2
            if total > 100:
                ctx.run(notify, order_id, channel="email")
            return total
        """,
    "wrapped with functools.wraps": """
        @wrap
        def flow(ctx, order_id):
            total = ctx.run(price, order_id) * 2
            if total > 100:
                ctx.run(notify, order_id, channel="email")
            return total
        """,
}


@pytest.mark.parametrize("source", SAME_BODY.values(), ids=SAME_BODY.keys())
def test_formatting_comments_and_docstrings_keep_the_hash(load: Loader, source: str) -> None:
    assert hash_of(load, source) == hash_of(load, BASE)


def test_hash_is_16_hex_characters_and_stable(load: Loader) -> None:
    first = hash_of(load, BASE)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert hash_of(load, BASE) == first


def test_renaming_the_def_keeps_the_hash(load: Loader) -> None:
    archived = BASE.replace("def flow(", "def flow_v1(")
    assert hash_of(load, archived, attr="flow_v1") == hash_of(load, BASE)


def test_nested_docstrings_are_ignored(load: Loader) -> None:
    template = '''
        def flow(ctx):
            def helper(x):
                """{helper_doc}"""
                return x + 1

            class Box:
                """{box_doc}"""
                size = 3

            return helper(Box.size)
        '''
    one = template.format(helper_doc="Add one.", box_doc="A box.")
    other = template.format(helper_doc="Increment.", box_doc="Holds the size.")
    assert hash_of(load, one) == hash_of(load, other)
    renamed_helper = one.replace("helper", "helper2")
    assert hash_of(load, renamed_helper) != hash_of(load, one)


def test_multiline_string_in_an_indented_def_is_read_from_source(load: Loader) -> None:
    top_level = '''
        def flow(ctx):
            return ctx.run(query, """
        SELECT 1
        """)
        '''
    nested = '''
        if True:
            def flow(ctx):
                return ctx.run(query, """
        SELECT 1
        """)
        '''
    assert hash_of(load, nested) == hash_of(load, top_level)


# --- version_hash: what must change it --------------------------------------

ONE_TOKEN_CHANGES = {
    "constant": ("* 2", "* 3"),
    "operator": ("* 2", "+ 2"),
    "comparison": ("> 100", ">= 100"),
    "called name": ("ctx.run(notify", "ctx.run(refund"),
    "string argument": ('"email"', '"sms"'),
    "keyword name": ("channel=", "via="),
    "new parameter": ("order_id):", "order_id, rush=False):"),
    "negated result": ("return total", "return -total"),
    "async def": ("def flow", "async def flow"),
}


@pytest.mark.parametrize("old,new", ONE_TOKEN_CHANGES.values(), ids=ONE_TOKEN_CHANGES.keys())
def test_one_token_changes_the_hash(load: Loader, old: str, new: str) -> None:
    assert old in BASE
    assert hash_of(load, BASE.replace(old, new)) != hash_of(load, BASE)


def test_version_number_changes_the_hash(load: Loader) -> None:
    flow = load(BASE).flow
    assert version_hash(flow, 1) != version_hash(flow, 2)


# --- version_hash: no source ------------------------------------------------

EXEC_BODY = '''
def flow(ctx, order_id):
    """Charge an order."""
    def helper(x):
        return x * 2
    if order_id in {"a", "b", "c"}:
        return helper(ctx.run(price, order_id))
    return None
'''


def test_function_without_source_hashes_its_code_object() -> None:
    flow = exec_function(EXEC_BODY)
    first = version_hash(flow, 1)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert version_hash(exec_function(EXEC_BODY), 1) == first
    assert version_hash(flow, 2) != first

    renamed = exec_function(EXEC_BODY.replace("def flow(", "def flow_v1("), name="flow_v1")
    assert version_hash(renamed, 1) == first
    new_doc = exec_function(EXEC_BODY.replace("Charge an order.", "Bill an order."))
    assert version_hash(new_doc, 1) == first

    for old, new in [("x * 2", "x * 3"), ('"c"', '"d"'), ("price", "cost"), ("helper", "h")]:
        changed = exec_function(EXEC_BODY.replace(old, new))
        assert version_hash(changed, 1) != first, (old, new)


def test_lambda_falls_back_to_its_code_object(load: Loader) -> None:
    from_file = load("flow = lambda ctx: ctx.run(price, 1) + 1\n").flow
    from_exec = exec_function("flow = lambda ctx: ctx.run(price, 1) + 1\n")
    assert version_hash(from_file, 1) == version_hash(from_exec, 1)


@pytest.mark.parametrize("fn", [len, functools.partial(print, "x")], ids=["builtin", "partial"])
def test_object_without_source_or_code_is_refused(fn: Callable[..., Any]) -> None:
    with pytest.raises(DefinitionError, match="plain `def`"):
        version_hash(fn, 1)


# --- Registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Definition:
    name: str
    version: int
    version_hash: str
    fn: Callable[..., Any]


def define(fn: Callable[..., Any], version: int, name: str = "order_flow") -> Definition:
    return Definition(name, version, version_hash(fn, version), fn)


V1 = """
def order_flow(ctx, order_id):
    return ctx.run(charge, order_id)
"""

V2 = """
def order_flow(ctx, order_id):
    receipt = ctx.run(charge, order_id)
    ctx.run(ship, order_id)
    return receipt
"""


def test_several_versions_of_one_workflow_coexist(load: Loader) -> None:
    reg = Registry()
    v1 = define(load(V1).order_flow, 1)
    v2 = define(load(V2).order_flow, 2)
    other = define(load(V1).order_flow, 1, name="audit_flow")
    for definition in (v2, other, v1):
        reg.register(definition)

    assert reg.get("order_flow", v1.version_hash) is v1
    assert reg.get("order_flow", v2.version_hash) is v2
    assert reg.current("order_flow") is v2
    assert reg.find("order_flow", v1.version_hash) is v1
    assert reg.find("order_flow", "0" * 16) is None
    assert reg.has("order_flow", v2.version_hash)
    assert not reg.has("audit_flow", v2.version_hash)
    assert reg.names() == ["audit_flow", "order_flow"]
    assert reg.definitions() == [other, v1, v2]


def test_current_is_the_highest_version_whatever_the_load_order(load: Loader) -> None:
    v1 = define(load(V1).order_flow, 1)
    v2 = define(load(V2).order_flow, 2)
    for order in ((v1, v2), (v2, v1)):
        reg = Registry()
        for definition in order:
            reg.register(definition)
        assert reg.current("order_flow") is v2


def test_registering_the_same_hash_again_replaces_it(load: Loader) -> None:
    reg = Registry()
    first = define(load(V1).order_flow, 1)
    reimported = define(load(V1).order_flow, 1)
    assert first.version_hash == reimported.version_hash
    reg.register(first)
    reg.register(reimported)
    assert reg.get("order_flow", first.version_hash) is reimported
    assert reg.current("order_flow") is reimported
    assert reg.definitions() == [reimported]


def test_two_bodies_with_the_same_version_are_refused(load: Loader) -> None:
    reg = Registry()
    old_module, new_module = load(V1), load(V2)
    old = define(old_module.order_flow, 2)
    reg.register(old)

    with pytest.raises(DefinitionError) as caught:
        reg.register(define(new_module.order_flow, 2))

    message = str(caught.value)
    assert f"{old_module.__name__}:order_flow" in message
    assert f"{new_module.__name__}:order_flow" in message
    assert "Bump `version=` on the new body (e.g. version=3)" in message
    assert "give the old body a different version" in message
    assert caught.value.version == 2
    assert reg.definitions() == [old]


def test_a_body_edited_without_a_version_bump_is_refused() -> None:
    reg = Registry()
    reg.register(define(exec_function(V1, "order_flow", module="shop.flows"), 1))
    with pytest.raises(DefinitionError) as caught:
        reg.register(define(exec_function(V2, "order_flow", module="shop.flows"), 1))
    assert "shop.flows:order_flow changed but kept version=1" in str(caught.value)


def test_unknown_name_is_unknown_workflow(load: Loader) -> None:
    reg = Registry()
    reg.register(define(load(V1).order_flow, 1))
    reg.register(define(load(V1).order_flow, 1, name="audit_flow"))

    with pytest.raises(UnknownWorkflow, match=r"'refund_flow'.*audit_flow, order_flow"):
        reg.get("refund_flow", "0" * 16)
    with pytest.raises(UnknownWorkflow, match=r"'refund_flow'.*audit_flow, order_flow"):
        reg.current("refund_flow")
    with pytest.raises(UnknownWorkflow, match=r"\(loaded: none\)"):
        Registry().current("order_flow")


def test_unknown_hash_of_a_known_name_is_unknown_version(load: Loader) -> None:
    reg = Registry()
    v1 = define(load(V1).order_flow, 1)
    v2 = define(load(V2).order_flow, 2)
    reg.register(v1)
    reg.register(v2)

    with pytest.raises(UnknownVersion) as caught:
        reg.get("order_flow", "deadbeefdeadbeef")

    error = caught.value
    assert not isinstance(error, UnknownWorkflow)
    assert f"{v1.version_hash} (version 1), {v2.version_hash} (version 2)" in str(error)
    assert "Deploy a worker" in str(error)
    assert "`continuum versions`" in str(error)
    assert error.workflow == "order_flow"
    assert error.version_hash == "deadbeefdeadbeef"
    assert error.loaded == [v1.version_hash, v2.version_hash]

    revived = pickle.loads(pickle.dumps(error))
    assert type(revived) is UnknownVersion
    assert str(revived) == str(error)
    assert revived.loaded == error.loaded


def test_concurrent_registration_loses_nothing(load: Loader) -> None:
    reg = Registry()
    fn = load(V1).order_flow
    definitions = [define(fn, 1, name=f"flow_{i:03}") for i in range(200)]
    start = threading.Barrier(8)

    def register(chunk: list[Definition]) -> None:
        start.wait()
        for definition in chunk:
            reg.register(definition)

    threads = [threading.Thread(target=register, args=(definitions[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert reg.definitions() == definitions


def test_module_level_registry_is_a_registry() -> None:
    assert isinstance(versioning.registry, Registry)
