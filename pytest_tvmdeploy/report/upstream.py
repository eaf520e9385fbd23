"""An upstream-ready reproducer: one diverging operator as a standalone script for a TVM issue.

``upstream/repro.py`` needs only ``torch`` (or ``onnx``), ``numpy`` and ``tvm``, not this package:
it rebuilds the operator with TVM's own frontend and ``tvm.compile``, runs it on the operator's
real inputs (``input_<i>.npy`` beside it) and fails with the mismatch while TVM differs.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase

FOLDER = "upstream"
SCRIPT = "repro.py"

_HEAD = '''\
"""{op}: TVM {tvm} differs from {framework} {framework_version} on target {target}.

Standalone: needs numpy, {framework_package} and apache-tvm; the operator's real inputs are the
.npy files beside this script. Fails with the mismatch while TVM computes it differently.
"""
from pathlib import Path

import numpy as np
{framework_package_import}
import tvm
from tvm import relax
{imports}
HERE = Path(__file__).resolve().parent
INPUTS = [np.load(HERE / f"input_{{i}}.npy") for i in range({count})]
TARGET = tvm.target.Target({target})


def run_tvm(module):
{passes}    executable = tvm.compile(module, target=TARGET)
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in INPUTS])
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]

'''

_TORCH = '''\

class Operator(torch.nn.Module):
{code}


arguments = tuple(torch.from_numpy(a) for a in INPUTS)
expected = Operator()(*arguments)
expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else [expected])]
actual = run_tvm(from_exported_program(torch.export.export(Operator(), arguments)))
'''

_ONNX = '''\
expected = [np.load(HERE / f"expected_{{i}}.npy") for i in range({outputs})]  # ONNX Runtime {ort}
model = onnx.load(HERE / "operator.onnx")
shapes = {{i.name: list(a.shape) for i, a in zip(model.graph.input, INPUTS)}}
actual = run_tvm(from_onnx(model, shape_dict=shapes))
'''

_TAIL = '''\
for want, got in zip(expected, actual):
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol={rtol!r}, atol={atol!r},
                               err_msg="TVM's result differs from {framework}'s")
print("TVM matches {framework}: the divergence is gone")
'''


#: Names FX's printed code may use, and the line that defines each.
_FX_NAMES = (("device(", "from torch import device\n"), ("inf", "from math import inf\n"),
             ("nan", "from math import nan\n"))


def upstream_script(case: OperatorCase, target: Mapping[str, Any], tvm_version: str) -> str:
    """The text of ``repro.py`` for ``case`` built for ``target``."""
    torch_case = case.framework == "pytorch"
    framework = "PyTorch" if torch_case else "ONNX Runtime"
    imports = ("from tvm.relax.frontend.torch import from_exported_program\n" if torch_case
               else "from tvm.relax.frontend.onnx import from_onnx\n")
    version = case.versions.get("torch" if torch_case else "onnx", "?")
    text = _HEAD.format(op=case.op, tvm=tvm_version, framework=framework, framework_version=version,
                        framework_package="torch" if torch_case else "onnx", target=json.dumps(dict(target)),
                        imports=imports, count=len(case.inputs),
                        framework_package_import="import torch" if torch_case else "import onnx",
                        passes=_passes(case.passes))
    if torch_case:
        code = case.code or ""
        prelude = "".join(line for needed, line in _FX_NAMES if needed in code)
        text += prelude + _TORCH.format(code=textwrap.indent(code, "    "))
    else:
        text += _ONNX.format(outputs=len(case.expected), ort=case.versions.get("onnxruntime", ""))
    return text + _TAIL.format(rtol=case.rtol, atol=case.atol, framework=framework)


def _passes(names: tuple[str, ...]) -> str:
    """The lines running ``names`` (``relax.transform`` passes) before ``tvm.compile``, if any."""
    if not names:
        return ""
    listed = textwrap.indent(textwrap.fill(", ".join(repr(n) for n in names), 96), " " * 12)
    return ("    with TARGET:  # what the failing build ran before lowering (fusion among it)\n"
            f"        passes = [getattr(relax.transform, name)() for name in (\n{listed})]\n"
            "        module = tvm.transform.Sequential(passes)(module)\n")


def write_upstream(folder: Path, case: OperatorCase, target: Mapping[str, Any], tvm_version: str) -> Path:
    """Write the script and its inputs into ``folder/upstream``; returns the script's path."""
    where = folder / FOLDER
    where.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(case.inputs):
        np.save(where / f"input_{index}.npy", np.asarray(array), allow_pickle=False)
    for index, array in enumerate(case.expected):
        np.save(where / f"expected_{index}.npy", np.asarray(array), allow_pickle=False)
    if case.onnx_model is not None:
        (where / "operator.onnx").write_bytes(case.onnx_model)
    script = where / SCRIPT
    script.write_text(upstream_script(case, target, tvm_version))
    return script
