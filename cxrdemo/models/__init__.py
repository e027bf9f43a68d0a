"""Networks and their files: the architecture registry (`architectures`) and the weights + cards on disk
(`registry`: load, promote, rollback). Imports base and imaging.
"""
