"""`medinfer serve`: a DICOM-native inference service.

Front doors (DICOM DIMSE C-STORE/C-ECHO, DICOMweb STOW-RS, REST) store what
they receive and record it in the job store; workers lease jobs, run the
routed model and write DICOM SEG / SR / Secondary Capture results, which are
delivered to the configured destinations. Modules:

* :mod:`~medinfer.serve.config`   validated YAML configuration
* :mod:`~medinfer.serve.store`    SQLAlchemy job store (studies, instances, jobs, results,
  deliveries, audit, tokens) with atomic job leases
* :mod:`~medinfer.serve.routing`  study attributes -> model artifact
* :mod:`~medinfer.serve.ingest`   write + fsync + record received instances and uploads
* :mod:`~medinfer.serve.dimse`    pynetdicom AE (C-ECHO, C-STORE SCP)
* :mod:`~medinfer.serve.worker`   lease -> predict -> results
* :mod:`~medinfer.serve.results`  DICOM SEG, Comprehensive SR, Secondary Capture, JSON
* :mod:`~medinfer.serve.delivery` C-STORE SCU / STOW-RS with retries
* :mod:`~medinfer.serve.api`      FastAPI app (REST, STOW-RS, metrics, web page)
* :mod:`~medinfer.serve.service`  runs all of it in one process plus worker processes

Nothing here is imported by ``import medinfer``; the web and DICOM libraries
are loaded only when the service is used.
"""
