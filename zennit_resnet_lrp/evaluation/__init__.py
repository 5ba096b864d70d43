"""The evaluation layer: what the paper measures (Insertion, Deletion, ID) for named methods over datasets."""
