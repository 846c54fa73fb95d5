"""Soundness/completeness reports: sound encodings pass, the paper's GroupNorm encoding is caught."""

from __future__ import annotations

import json

import torch
import torch.nn as nn

from symgraph.automorphisms import soundness_report


class ResMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.b2, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + self.b2(torch.relu(self.b(h))))


def groupnorm_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    m[1].weight.data.normal_()
    m[1].bias.data.normal_()
    return m


def test_report_on_mlp_cnn_and_residual_models_is_sound_and_complete():
    models = [
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), None),
        (
            nn.Sequential(
                nn.Conv2d(2, 3, 3),
                nn.BatchNorm2d(3),
                nn.ReLU(),
                nn.Conv2d(3, 2, 1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(2, 2),
            ),
            (1, 2, 5, 5),
        ),
        (ResMLP(), None),
    ]
    for model, shape in models:
        r = soundness_report(model, input_shape=shape, n_random=3)
        assert r.ok, r.to_text()
        assert r.rows and all(row.verdict == "sound, complete" for row in r.rows)
        assert r.computed_order == r.declared_order
        assert "verdict: sound, complete" in r.to_text()


def test_report_catches_the_papers_groupnorm_encoding_negative_control():
    model = groupnorm_cnn()
    sound = soundness_report(model, input_shape=(1, 2, 5, 5), n_random=4)
    assert sound.ok, sound.to_text()
    paper = soundness_report(model, input_shape=(1, 2, 5, 5), encoding="paper", n_random=4)
    assert not paper.sound and not paper.complete
    assert paper.computed_order > paper.declared_order == sound.computed_order
    bad = [row for row in paper.rows if not row.sound]
    assert bad and bad[0].completeness == "extra" and bad[0].max_diff > 1e-6
    assert "UNSOUND" in paper.to_text()


def test_report_dict_is_json_ready():
    r = soundness_report(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), n_random=2)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["computed_order"] == "6" and d["declared_order"] == "6" and d["ok"] is True
    assert d["rows"][0]["verdict"] == "sound, complete" and d["rows"][0]["generators_checked"] >= 1
