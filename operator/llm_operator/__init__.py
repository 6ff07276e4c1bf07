"""llm-operator: plan, render and autoscale LLM serving on Kubernetes."""
