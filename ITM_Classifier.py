#!/usr/bin/env python
"""Image-text matching classifier (CMP9137 baseline), rebuilt on TensorFlow 2.20 / Keras 3.

    python ITM_Classifier.py [--data-dir DIR] [--epochs N] [--batch-size B] [--learning-rate LR]
                             [--seed S] [--output-dir OUT] [--limit N]

Trains, evaluates on the test split and prints sample predictions, as the original did.
Same as `itm train`; see `python ITM_Classifier.py --help`.
"""
import sys

from itm.cli import itm_classifier_main

if __name__ == "__main__":
    sys.exit(itm_classifier_main())
