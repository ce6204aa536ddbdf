"""orderopt: find the best intra-patch decoding order of multistage spatial context models.

The flow, one module per step: images (``data``) → base model (``model``) → latent cache
(``latents``) → context models (``context``) → cost oracle (``costs``) → search strategies
(``strategies``) → results (``search``) → report (``report``). Orders themselves live in
``orders``.
"""

__version__ = "0.1.0"
