"""Driver for lorashare (this checkout), run with the project's .venv: see _protocol.py."""

import os

from _protocol import Clock, parse

from share_torch import SHAREModel

args = parse()
clock = Clock()
if args.command == "compress":
    gpu = {}
    if args.device != "cpu":  # the CUDA context is made once per process: timed apart from the compression
        import torch

        torch.zeros(1, device=args.device)
        torch.cuda.synchronize(args.device)
        clock.mark("cuda_init")
    model = SHAREModel.from_adapters(args.adapters, num_components=args.k, layer_by_layer=args.layer_by_layer,
                                     chunk_size=args.chunk_size, device=args.device,
                                     show_progress=os.environ.get("LORASHARE_BENCH_PROGRESS") == "1")  # (to its log)
    clock.mark("build")  # (results are on the host when from_adapters returns: nothing is left in flight)
    model.save_pretrained(args.out)
    clock.mark("save")
    if args.device != "cpu":
        gpu = {"gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(args.device) / 2**20,
               "gpu_name": torch.cuda.get_device_name(args.device)}
    clock.emit(k_meaning="components per (module, side), capped at the rank of that group's stacked data",
               device=args.device, **gpu)
else:
    model = SHAREModel.from_pretrained(args.checkpoint)
    clock.mark("load")
    for name in args.names:
        model.reconstruct(name, output_dir=os.path.join(args.out_dir, name))
    clock.mark("reconstruct")
    clock.emit()
