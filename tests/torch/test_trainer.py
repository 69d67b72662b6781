"""An injected model trains under HF Trainer (accelerate underneath) and a plain loop."""

import pytest
import torch

import mixlight as ml
from tests.torch.conftest import tiny_t5


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, 100, (n, 6), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].flip(0)}


def test_hf_trainer_updates_only_the_adapter(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = ml.inject(tiny_t5(), ml.MoV(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=1,
    )
    transformers.Trainer(model=model, args=args, train_dataset=Pairs()).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert any(n.endswith("adapter.vectors") for n in changed)
    ml.save_adapter(model, tmp_path / "adapter")
