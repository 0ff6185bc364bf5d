"""Plugins that mark inside other inference engines (:mod:`antidistill.engines.vllm`), over the engine-independent
batch bookkeeping of :mod:`antidistill.engines.marking`. Only the plugin modules import their engine."""
