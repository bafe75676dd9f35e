//! Dependency graphs over step indices: topological order, execution levels and cycles.
//!
//! Everything is iterative, so a 10 000-step chain cannot overflow the stack.

/// Steps `0..len` and their edges; `deps[i]` must finish before `i` starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    pub deps: Vec<Vec<usize>>,
    pub dependents: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds a graph of `len` nodes from `(dependency, dependent)` pairs.
    /// Duplicate edges are kept once.
    pub fn new(len: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Graph {
        let mut g = Graph {
            deps: vec![Vec::new(); len],
            dependents: vec![Vec::new(); len],
        };
        for (from, to) in edges {
            if !g.deps[to].contains(&from) {
                g.deps[to].push(from);
                g.dependents[from].push(to);
            }
        }
        g
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// Kahn's algorithm grouped into levels: every node of level `k` depends only on nodes
    /// of levels `< k`. Nodes within a level keep their index order. Fails with the
    /// cycles when there are any.
    pub fn levels(&self) -> Result<Vec<Vec<usize>>, Vec<Vec<usize>>> {
        let mut indegree: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut current: Vec<usize> = (0..self.len()).filter(|&i| indegree[i] == 0).collect();
        let (mut levels, mut seen) = (Vec::new(), 0);
        while !current.is_empty() {
            let mut next = Vec::new();
            for &node in &current {
                for &d in &self.dependents[node] {
                    indegree[d] -= 1;
                    if indegree[d] == 0 {
                        next.push(d);
                    }
                }
            }
            next.sort_unstable();
            seen += current.len();
            levels.push(std::mem::replace(&mut current, next));
        }
        if seen == self.len() {
            Ok(levels)
        } else {
            Err(self.cycles())
        }
    }

    /// A topological order (levels flattened).
    pub fn topo_order(&self) -> Result<Vec<usize>, Vec<Vec<usize>>> {
        self.levels().map(|l| l.into_iter().flatten().collect())
    }

    /// Every cycle, as the strongly connected components that have more than one node or a
    /// self-edge. Each component lists its nodes in ascending order; components are sorted
    /// by their first node.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = tarjan(&self.dependents)
            .into_iter()
            .filter(|c| c.len() > 1 || self.deps[c[0]].contains(&c[0]))
            .map(|mut c| {
                c.sort_unstable();
                c
            })
            .collect();
        out.sort();
        out
    }
}

/// Iterative Tarjan's strongly connected components over an adjacency list.
fn tarjan(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = adj.len();
    let (mut index, mut low) = (vec![UNSEEN; n], vec![0; n]);
    let (mut on_stack, mut stack, mut out) = (vec![false; n], Vec::new(), Vec::new());
    let mut counter = 0;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // Each frame is (node, position of the next edge to look at).
        let mut frames = vec![(root, 0usize)];
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut edge)) = frames.last_mut() {
            if let Some(&next) = adj[node].get(*edge) {
                *edge += 1;
                if index[next] == UNSEEN {
                    index[next] = counter;
                    low[next] = counter;
                    counter += 1;
                    stack.push(next);
                    on_stack[next] = true;
                    frames.push((next, 0));
                } else if on_stack[next] {
                    low[node] = low[node].min(index[next]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(parent, _)) = frames.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Graph;
    use proptest::prelude::*;

    #[test]
    fn levels_of_a_diamond() {
        let g = Graph::new(4, [(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(g.levels(), Ok(vec![vec![0], vec![1, 2], vec![3]]));
    }

    #[test]
    fn reports_each_cycle_once() {
        let g = Graph::new(6, [(0, 1), (1, 2), (2, 0), (3, 3), (4, 5)]);
        assert_eq!(g.levels(), Err(vec![vec![0, 1, 2], vec![3]]));
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let n = 200_000;
        let g = Graph::new(n, (1..n).map(|i| (i - 1, i)));
        assert_eq!(g.topo_order().map(|o| o.len()), Ok(n));
        let cyclic = Graph::new(n, (1..n).map(|i| (i - 1, i)).chain([(n - 1, 0)]));
        assert_eq!(cyclic.cycles().len(), 1);
    }

    /// Which nodes each node can reach, by brute force.
    fn reach(g: &Graph) -> Vec<Vec<bool>> {
        let n = g.len();
        let mut r = vec![vec![false; n]; n];
        for (s, row) in r.iter_mut().enumerate() {
            let mut todo = g.dependents[s].clone();
            while let Some(x) = todo.pop() {
                if !row[x] {
                    row[x] = true;
                    todo.extend(&g.dependents[x]);
                }
            }
        }
        r
    }

    fn edges(max_nodes: usize) -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
        (1..max_nodes).prop_flat_map(|n| (Just(n), prop::collection::vec((0..n, 0..n), 0..n * 3)))
    }

    proptest! {
        #[test]
        fn topo_order_respects_every_edge((n, raw) in edges(40)) {
            // Only forward edges: always acyclic.
            let g = Graph::new(n, raw.into_iter().filter(|(a, b)| a < b));
            let order = g.topo_order().expect("acyclic");
            prop_assert_eq!(order.len(), n);
            let mut pos = vec![0; n];
            for (i, &node) in order.iter().enumerate() { pos[node] = i; }
            for (to, deps) in g.deps.iter().enumerate() {
                for &from in deps { prop_assert!(pos[from] < pos[to]); }
            }
        }

        #[test]
        fn cycle_detection_finds_every_cycle((n, raw) in edges(25)) {
            let g = Graph::new(n, raw);
            let r = reach(&g);
            let on_cycle: Vec<usize> = (0..n).filter(|&i| r[i][i]).collect();
            let found: Vec<usize> = {
                let mut v: Vec<usize> = g.cycles().into_iter().flatten().collect();
                v.sort_unstable();
                v
            };
            prop_assert_eq!(&found, &on_cycle);
            // Nodes share a reported cycle exactly when they reach each other.
            for c in g.cycles() {
                for &a in &c { for &b in &c { prop_assert!(a == b || (r[a][b] && r[b][a])); } }
            }
            prop_assert_eq!(g.levels().is_ok(), on_cycle.is_empty());
        }
    }
}
