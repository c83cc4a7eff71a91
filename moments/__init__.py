"""The Ray and LanceDB side of the product: the segments index, library-wide grounding, distributed training."""
