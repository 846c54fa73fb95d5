"""One name per elementwise function (symgraph.activations), the same in every form and both graphs.

For every supported activation, and for default and non-default arguments: the module form
(``nn.LeakyReLU(a)``), every functional form (``F.leaky_relu(x, a)``, keyword arguments, ``torch.relu``,
``x.relu()``), the parameter graph and the computation graph give one key, and the key evaluates to the same
function (Eq. 7). Negative controls: arguments that differ (even past the sixth digit) give different keys, and
a graph built with another argument evaluates differently.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.activations import (
    ACTIVATION_MODULES,
    ACTIVATIONS,
    CONSTANT_OPS,
    activation_function,
    activation_key,
    constant_op_key,
    format_arg,
    function_activation_key,
    module_activation_key,
)
from symgraph.errors import SymgraphError

#: Non-default arguments per parametrised activation (every parameter changed; floats that %g would round).
NON_DEFAULT = {
    "leaky_relu": (0.1234567,),
    "elu": (0.5,),
    "celu": (0.7654321,),
    "softplus": (2.0, 10.0),
    "gelu": ("tanh",),
    "hardtanh": (-2.0, 2.5),
}


class Call(nn.Module):
    """``fn(x, *args, **kwargs)``, or the method ``x.fn(*args)`` when ``fn`` is a string."""

    def __init__(self, fn, args=(), kwargs=None):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, tuple(args), dict(kwargs or {})

    def forward(self, x):
        if isinstance(self.fn, str):
            return getattr(x, self.fn)(*self.args, **self.kwargs)
        return self.fn(x, *self.args, **self.kwargs)


def _cases():
    for name, act in ACTIVATIONS.items():
        yield pytest.param(name, (), id=f"{name}-defaults")
        if act.params:
            yield pytest.param(name, NON_DEFAULT[name], id=f"{name}-args")


def _forms(name: str, args: tuple) -> dict[str, nn.Module]:
    """Every form of activation ``name`` with the arguments ``args`` (positional, after the input)."""
    act = ACTIVATIONS[name]
    forms: dict[str, nn.Module] = {}
    for m in act.modules:
        forms[f"module {m.__name__}"] = m(*args)
    kw = dict(zip((n for n, _ in act.params), args, strict=False))
    for t in act.targets:
        label = t if isinstance(t, str) else f"{getattr(t, '__module__', '')}.{getattr(t, '__name__', t)}"
        if isinstance(t, str) or not act.params:
            if not args:
                forms[f"method {label}" if isinstance(t, str) else f"function {label}"] = Call(t)
            continue
        if name != "gelu":  # F.gelu's approximate is keyword-only
            forms[f"function {label} positional"] = Call(t, args)
        forms[f"function {label} keywords"] = Call(t, (), kw)
    if act.params and not args:
        forms["function without arguments"] = Call(act.targets[0])
    if "inplace" in act.signature and act.targets:
        forms["function inplace=False"] = Call(act.targets[0], args if name != "gelu" else (), {"inplace": False})
    return forms


def _hidden_acts(g) -> set[tuple]:
    return {k[2] for k in g.node_color_keys if k[0] == "hidden"}


def test_every_activation_module_and_target_is_covered():
    assert set(NON_DEFAULT) == {n for n, a in ACTIVATIONS.items() if a.params}
    assert set(ACTIVATION_MODULES) == {m for a in ACTIVATIONS.values() for m in a.modules}
    for a in ACTIVATIONS.values():
        for t in a.targets:
            assert not isinstance(t, str) or hasattr(torch.Tensor, t), f"dead method target {t!r} of {a.name}"


@pytest.mark.parametrize("name,args", list(_cases()))
def test_module_functional_and_both_graphs_give_one_key_that_evaluates_the_function(name, args):
    torch.manual_seed(0)
    expected = activation_key(name, args)
    z = torch.linspace(-4, 4, 41, dtype=torch.float64)
    forms = _forms(name, args)
    assert forms, name
    for label, form in forms.items():
        if isinstance(form, Call):
            assert function_activation_key(form.fn, form.args, form.kwargs) == expected, label
        else:
            assert module_activation_key(form) == expected, label
        assert torch.equal(activation_function(expected)(z), form(z)), label
        model = nn.Sequential(nn.Linear(3, 4), form, nn.Linear(4, 2)).double().eval()
        x = torch.randn(5, 3, dtype=torch.float64)
        pg = symgraph.parameter_graph(model, x)
        cg = symgraph.computation_graph(model, x)
        assert _hidden_acts(pg) == {(expected,)}, label
        assert _hidden_acts(cg) == {(expected,)}, label
        assert float((cg(x) - model(x)).detach().abs().max()) <= 1e-12, label


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.params])
def test_distinct_arguments_give_distinct_keys_and_functions(name):
    """Negative control: each parameter changed alone (by 1e-7, which %g formatting would hide) changes the key,
    in the module form and in both graphs, and a graph evaluated with the other key gives another function."""
    act = ACTIVATIONS[name]
    base = NON_DEFAULT[name]
    for i, (pname, _) in enumerate(act.params):
        other = list(base)
        other[i] = "none" if isinstance(base[i], str) else base[i] + 1e-7
        k0, k1 = activation_key(name, base), activation_key(name, tuple(other))
        assert k0 != k1, (name, pname)
        if act.modules:
            m0, m1 = act.modules[0](*base), act.modules[0](*other)
            assert module_activation_key(m0) != module_activation_key(m1)
            keys = []
            for m in (m0, m1):
                model = nn.Sequential(nn.Linear(2, 3), m, nn.Linear(3, 1)).double()
                x = torch.zeros(1, 2, dtype=torch.float64)
                keys.append(
                    (
                        _hidden_acts(symgraph.parameter_graph(model, x)),
                        _hidden_acts(symgraph.computation_graph(model, x)),
                    )
                )
            assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]
        z = torch.linspace(-4, 4, 81, dtype=torch.float64)
        if name == "softplus" and pname == "threshold":
            # the threshold only matters where beta * z crosses it: between the two thresholds
            z = torch.tensor([(base[1] + 0.5e-7) / base[0]], dtype=torch.float64)
        assert not torch.equal(activation_function(k0)(z), activation_function(k1)(z)), (name, pname)


def test_distinct_activations_get_distinct_keys():
    keys = [activation_key(n) for n in ACTIVATIONS] + [activation_key(n, a) for n, a in NON_DEFAULT.items()]
    assert len(set(keys)) == len(keys)


class Const(nn.Module):
    def __init__(self, op: str, c: float):
        super().__init__()
        self.op, self.c = op, c

    def forward(self, x):
        c = self.c
        return {
            "mul": lambda: x * c,
            "rmul": lambda: c * x,
            "div": lambda: x / c,
            "rdiv": lambda: c / x,
            "add": lambda: x + c,
            "radd": lambda: c + x,
            "sub": lambda: x - c,
            "rsub": lambda: c - x,
        }[self.op]()


@pytest.mark.parametrize("op", ["mul", "rmul", "div", "rdiv", "add", "radd", "sub", "rsub"])
def test_constant_arithmetic_has_one_exact_key_in_both_graphs(op):
    c = 0.1234567
    canonical = {"rmul": "mul", "radd": "add"}.get(op, op)
    expected = constant_op_key(canonical, c)
    assert expected == f"{canonical}(0.1234567)"
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), Const(op, c), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    pg, cg = symgraph.parameter_graph(model, x), symgraph.computation_graph(model, x)
    assert _hidden_acts(pg) == _hidden_acts(cg) == {("tanh", expected)}
    assert float((cg(x) - model(x)).detach().abs().max()) <= 1e-12
    # negative control: x - c and c - x, x / c and c / x are different functions with different keys
    assert len({constant_op_key(o, c) for o in CONSTANT_OPS}) == len(CONSTANT_OPS)
    assert constant_op_key(canonical, c) != constant_op_key(canonical, c + 1e-7)


def test_format_arg_is_exact_and_short():
    for v in (30.0, 1.0, -1.0, 0.01, 1e-8, 1e8, 0.1234567, 1 / 3, 2.5e-300):
        s = format_arg(v)
        assert float(s) == v
        assert len(s) <= len(repr(v))
    assert format_arg(30.0) == "30" and format_arg(0.1234567) == "0.1234567"


def test_unknown_names_and_arguments_raise_typed_errors():
    with pytest.raises(SymgraphError):
        activation_function("softmax")
    with pytest.raises(SymgraphError):
        activation_key("leaky_relu", (0.1,), {"slope": 0.2})
    with pytest.raises(SymgraphError):
        activation_function("hardtanh(1)")
    with pytest.raises(SymgraphError):
        activation_key("no_such_activation")


class IssueModel(nn.Module):
    """The forms issue 17 found named differently: ``nn.LeakyReLU(a)`` vs ``F.leaky_relu(x, a)`` with an ``a``
    that %g rounds, ``F.hardtanh(x, -2, 2)`` (named ``hardtanh(2,-2)`` from sorted kwargs), ``30 * x``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.act = nn.LeakyReLU(0.1234567)

    def forward(self, x):
        h = self.act(self.a(x))
        h = F.leaky_relu(self.b(h), 0.1234567)
        h = F.hardtanh(self.c(h), -2, 2) * 30.0
        return self.d(h)


def test_issue_17_forms_get_one_key_in_both_graphs():
    model = IssueModel().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    pg, cg = symgraph.parameter_graph(model, x), symgraph.computation_graph(model, x)
    expected = {("leaky_relu(0.1234567)",), ("hardtanh(-2,2)", "mul(30)")}
    assert _hidden_acts(pg) == _hidden_acts(cg) == expected
    assert float((cg(x) - model(x)).detach().abs().max()) <= 1e-12
