"""The model repository (Triton layout): version folders written as one transaction, config.pbtxt, labels."""
