"""The test-time views, by one name each wherever a view is named: params.yaml's
``evaluate.tta``, ``fmnist predict --tta``, the metrics' ``test_views``, a model's
``meta.json`` and its ONNX metadata. Imports nothing, so that ``fmnist predict`` on an
ONNX file runs without torch."""

SINGLE = "single"  # each image once
MIRROR = "hflip"   # the mean of the logits of each image and its mirror image (the models
                   # train with horizontal flips, so both are images they know)
VIEWS = (SINGLE, MIRROR)
LABELS = {SINGLE: "single view", MIRROR: "image + mirror"}
