"""Test and benchmark data, generated or bundled, never fetched from the network.

One place for the data the tests (tests/) and the benchmarks (infra/bench) both use:

- :mod:`.generate`: small, valid Part 10 instances with chosen UIDs and attributes, and
  documents carrying PHI in every place a de-identifier must look;
- :mod:`.dicom_files`: pydicom's bundled test files and the pydicom-data collection;
- :mod:`.synthetic_ct`: a synthetic CT series with a known answer, for the inference hook.

Development only: nothing here is part of a Lambda layer or function (``sam build``
packages layers/ and functions/ only).
"""
