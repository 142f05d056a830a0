# Reads the cost estimate gantry adds to every run (input.tfrun.cost_estimate).
package terraform

max_monthly_increase := 100

deny[msg] {
	delta := input.tfrun.cost_estimate.delta_monthly_cost
	delta > max_monthly_increase
	msg := sprintf("monthly cost would rise by $%v (limit $%v)", [delta, max_monthly_increase])
}
