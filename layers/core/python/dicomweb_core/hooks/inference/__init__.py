"""AI inference on stable series: the model plugin interface, two backends and the result builders.

``model`` defines what a model is (:class:`~dicomweb_core.hooks.inference.model.Model`), validates what
it returns and loads the configured models; ``reference`` is a classic CPU-only CT body mask,
``sagemaker`` calls a SageMaker real-time endpoint, and ``results`` turns a result into a DICOM
Segmentation (PS3.3 C.8.20) and a TID 1500 Comprehensive 3D SR. Import those modules directly:
this package stays import-light (no numpy here) so a handler can import it cheaply.
"""
