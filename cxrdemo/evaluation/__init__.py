"""Numbers about models and data: metrics, calibration, the `evaluate` command, the performance page's
tables, saliency, reports and the dataset explorer's figures. Never imports training.
"""
