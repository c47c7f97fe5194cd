/// Policy at the virtualization layer: rules (YAML, `apiVersion: warden/v1`), a pure
/// evaluator `decide(operation, vm, context) → Decision`, lint and table-driven tests.
public enum Policy {}
