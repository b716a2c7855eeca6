"""placeholder"""
def add_evaluate_arguments(p): pass
def run_evaluate(args): raise NotImplementedError
