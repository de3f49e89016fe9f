"""Entry points behind train.py and the ``aistudio`` command."""
