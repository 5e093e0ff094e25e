"""Privacy mechanisms beyond "only weights travel": differential privacy accounting, secure
aggregation (pairwise masks) and homomorphic encryption (CKKS). Pure building blocks: the round
engine (``runtime``) and the site trainer (``training``) use them."""
