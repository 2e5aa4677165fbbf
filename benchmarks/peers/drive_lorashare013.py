"""Driver for lorashare==0.1.3 (PyPI), run with benchmarks/peers/.venv: see _protocol.py.

0.1.3's API: ``SHAREModel.from_adapters(paths, num_components, layer_by_layer=, chunk_size=)``,
``save_pretrained(dir)``, ``SHAREModel.from_pretrained(dir).reconstruct(name, output_dir=)``. Its k is one
number of eigenvectors of the d x d covariance of each (module, side) group's stacked factors, the same for
every group; basis and loadings are stored in float32.
"""

import os

from _protocol import Clock, parse

from lorashare import SHAREModel

args = parse()
clock = Clock()
if args.command == "compress":
    model = SHAREModel.from_adapters(args.adapters, num_components=args.k, layer_by_layer=args.layer_by_layer,
                                     chunk_size=args.chunk_size)
    clock.mark("build")
    model.save_pretrained(args.out)
    clock.mark("save")
    clock.emit(k_meaning="eigenvectors per (module, side) of the d x d covariance, one k for all groups")
else:
    model = SHAREModel.from_pretrained(args.checkpoint)
    clock.mark("load")
    for name in args.names:
        model.reconstruct(name, output_dir=os.path.join(args.out_dir, name))
    clock.mark("reconstruct")
    clock.emit()
