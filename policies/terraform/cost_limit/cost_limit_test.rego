package terraform

test_small_increase_passes {
	count(deny) == 0 with input as data.terraform.cost_limit.mock.cheap
}

test_large_increase_warns {
	deny["monthly cost would rise by $250 (limit $100)"] with input as data.terraform.cost_limit.mock.expensive
}
