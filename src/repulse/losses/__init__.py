"""Pure objectives: tensors in, tensors out. Import only torch."""
