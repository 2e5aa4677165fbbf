"""share_core imports only the standard library and array_api_compat, and exports its API."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import share_core

PACKAGE = pathlib.Path(share_core.__file__).parent

PUBLIC = {
    "array_namespace", "stack", "center", "covariance", "scatter_stats", "centered_scatter", "eigh",
    "basis", "merge_bases", "select_k", "explained_variance", "project", "reconstruct", "compress_side", "refine_bases",
    "fold_scale", "balance", "dw_error", "dw_errors", "relative_error", "InvalidArgumentError",
}


def test_importing_share_core_pulls_in_no_array_library():
    code = (
        "import sys; before = set(sys.modules); import share_core\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "allowed = set(sys.stdlib_module_names) | {'share_core', 'array_api_compat', '_distutils_hack'}\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(new)\n"
        "assert new <= allowed, sorted(new - allowed)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_only_the_compat_module_imports_array_api_compat():
    importers = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "array_api_compat" for n in names):
                importers.add(path.name)
    assert importers == {"_compat.py"}


def test_public_api_is_exactly_the_documented_names():
    assert set(share_core.__all__) == PUBLIC
    assert all(callable(getattr(share_core, name)) for name in PUBLIC)


def test_invalid_argument_error_is_the_one_class_of_the_error_family():
    from share_core import errors

    assert share_core.InvalidArgumentError is errors.InvalidArgumentError
    assert issubclass(errors.InvalidArgumentError, errors.ShareError)
    assert issubclass(errors.InvalidArgumentError, ValueError)
