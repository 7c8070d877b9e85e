"""The RADIUS vocabulary that the backend and the RADIUS bridge share.

Three packages speak RADIUS: ``backend`` (the domain checks a client's settings when an
administrator saves them), ``webportal`` (the console's client form) and ``radius_bridge``
(which reads those settings and answers the gateways). What they must agree on lives here,
once: the choices and limits of a client's settings (:mod:`radius_vocabulary.settings`), the
RADIUS dictionary with its encoder (:mod:`radius_vocabulary.dictionary`), the actions a
bridge may audit (:mod:`radius_vocabulary.audit`) and RadSec certificate fingerprints
(:mod:`radius_vocabulary.certs`).

The arrows point one way: ``backend``, ``webportal`` and ``radius_bridge`` import this
package; it imports none of them (tests/test_layering_imports.py checks it). Nothing here
does I/O except reading the dictionary file shipped beside it, once.
"""
