"""Answers for images: the batched forward pass, models that answer for themselves (`served`), the `Predictor`,
Grad-CAM (`explain`), k-NN votes and the out-of-distribution check. Never imports training.
"""
