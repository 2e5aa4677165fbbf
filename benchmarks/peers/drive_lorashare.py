"""Driver for lorashare (this checkout), run with the project's .venv: see _protocol.py."""

import os

from _protocol import Clock, parse

from share_torch import SHAREModel

args = parse()
clock = Clock()
if args.command == "compress":
    model = SHAREModel.from_adapters(args.adapters, num_components=args.k, layer_by_layer=args.layer_by_layer,
                                     chunk_size=args.chunk_size,
                                     show_progress=os.environ.get("LORASHARE_BENCH_PROGRESS") == "1")  # (to its log)
    clock.mark("build")
    model.save_pretrained(args.out)
    clock.mark("save")
    clock.emit(k_meaning="components per (module, side), capped at the rank of that group's stacked data")
else:
    model = SHAREModel.from_pretrained(args.checkpoint)
    clock.mark("load")
    for name in args.names:
        model.reconstruct(name, output_dir=os.path.join(args.out_dir, name))
    clock.mark("reconstruct")
    clock.emit()
