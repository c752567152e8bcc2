"""Run under torchrun by test_distributed_training.py: checks what each rank sees and holds.

Writes OUT/rank{r}.json with this rank's sample indices of epoch 0, a checksum of its parameters
after a few DDP steps (BatchNorm in training mode, as by default), and a checksum of the shipped
dataset decoded into one on-disk cache by both ranks together.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.core.distributed import init_distributed, shutdown
from mobilenets.data.disk_cache import decode_to_disk
from mobilenets.data.folders import DecodedImages, scan_folder
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.loop import Trainer


def main(out: Path) -> None:
    context = init_distributed("cpu")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 4
    data = DecodedImages(images, labels, [None] * 40, [], [""] * 40, [0] * 40)
    config = TrainConfig(data="synthetic", model="mobilenet_v1", width=0.25, resolution=32, batch_size=5, epochs=1,
                         lr=1e-3, warmup_epochs=0, augment="light", precision="fp32", ema=False)  # fmt: skip
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", num_classes=4, width=0.25)
    trainer = Trainer(config, model, data, data, ["a", "b", "c", "d"], out, Preprocessing(32, 32),
                      context=context, show_progress=False)  # fmt: skip
    seen = [int(i) for batch in trainer.batches(0) for i in batch]
    trainer.model.train()
    for step, indices in enumerate(trainer.batches(0)):
        trainer.train_step(indices, 0, step)
    parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    dataset = scan_folder(Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small").samples
    decoded = decode_to_disk(dataset, 32, out / "decoded", context)
    result = {"rank": context.rank, "world_size": context.world_size, "backend": context.backend, "indices": seen,
              "parameters_sum": float(parameters.double().sum()), "parameters_head": parameters[:20].tolist(),
              "decoded_sum": int(decoded.images.long().sum()), "decoded_count": len(decoded)}  # fmt: skip
    (out / f"rank{context.rank}.json").write_text(json.dumps(result))
    shutdown(context)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
