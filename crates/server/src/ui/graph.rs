//! The DAG drawing: a layered layout computed here, drawn as SVG by the templates.
//!
//! Steps are put in layers by the longest path from a source (a step's layer is one more
//! than its deepest dependency), edges that skip layers get invisible bend points in the
//! layers between, and the order within each layer is improved by barycenter sweeps that
//! keep the order with the fewest edge crossings. Coordinates and edge paths come out as
//! plain numbers and strings, so the template only places them (and escapes the names).

use std::collections::HashMap;

use trellis_core::graph::Graph;

/// Steps above this many are not drawn: the page would be slow and unreadable.
pub const MAX_DRAWN: usize = 400;

const NODE_W: f64 = 196.0;
const NODE_H: f64 = 40.0;
const MARGIN: f64 = 12.0;
const SWEEPS: usize = 12;

/// One step to draw: its name and the names it depends on.
pub struct Input<'a> {
    pub name: &'a str,
    pub depends: &'a [String],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    /// The name, shortened with `…` to fit the box.
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Status class of the step in the run shown (`not_started` when none).
    pub status: String,
    pub href: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// SVG path data.
    pub d: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub node_w: f64,
    pub node_h: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Lays out `steps`; nodes come back in the order of `steps`, with empty status and href.
pub fn layout(steps: &[Input]) -> Layout {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name, i)).collect();
    let edges: Vec<(usize, usize)> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let index = &index;
            s.depends
                .iter()
                .filter_map(move |d| index.get(d.as_str()).map(|&j| (j, i)))
        })
        .filter(|(j, i)| j != i)
        .collect();
    let graph = Graph::new(steps.len(), edges);
    let layer = layers(&graph);
    let mut g = Layered::new(&graph, &layer);
    g.order();
    g.place(steps)
}

/// Longest-path layering; the loader rejects cycles, but if one slips through the steps
/// still get drawn (in one row) rather than the page failing.
fn layers(graph: &Graph) -> Vec<usize> {
    let mut layer = vec![0; graph.len()];
    if let Ok(levels) = graph.levels() {
        for (k, level) in levels.iter().enumerate() {
            for &node in level {
                layer[node] = k;
            }
        }
    }
    layer
}

/// The graph with bend points added, so every edge joins adjacent layers.
struct Layered {
    layer: Vec<usize>,
    /// Per layer, the nodes in their current order.
    rows: Vec<Vec<usize>>,
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
    /// Each original edge as the chain of nodes it passes through.
    chains: Vec<Vec<usize>>,
    /// Each node's index within its row, kept in step with `rows`.
    pos: Vec<usize>,
}

impl Layered {
    fn new(graph: &Graph, layer: &[usize]) -> Layered {
        let real = graph.len();
        let mut g = Layered {
            layer: layer.to_vec(),
            rows: Vec::new(),
            up: vec![Vec::new(); real],
            down: vec![Vec::new(); real],
            chains: Vec::new(),
            pos: Vec::new(),
        };
        for (to, deps) in graph.deps.iter().enumerate() {
            for &from in deps {
                g.add_chain(from, to);
            }
        }
        let depth = g.layer.iter().max().map_or(0, |m| m + 1);
        g.rows = vec![Vec::new(); depth];
        g.pos = vec![0; g.layer.len()];
        for (node, &k) in g.layer.iter().enumerate() {
            g.pos[node] = g.rows[k].len();
            g.rows[k].push(node);
        }
        g
    }

    fn add_chain(&mut self, from: usize, to: usize) {
        let mut chain = vec![from];
        let mut prev = from;
        for k in self.layer[from] + 1..self.layer[to] {
            let bend = self.layer.len();
            self.layer.push(k);
            self.up.push(Vec::new());
            self.down.push(Vec::new());
            self.link(prev, bend);
            chain.push(bend);
            prev = bend;
        }
        self.link(prev, to);
        chain.push(to);
        self.chains.push(chain);
    }

    fn link(&mut self, a: usize, b: usize) {
        self.down[a].push(b);
        self.up[b].push(a);
    }

    /// Barycenter sweeps down and up, keeping the order with the fewest crossings.
    fn order(&mut self) {
        let mut best = self.rows.clone();
        let mut fewest = self.crossings();
        for sweep in 0..SWEEPS {
            let downward = sweep % 2 == 0;
            let ks: Vec<usize> = if downward {
                (1..self.rows.len()).collect()
            } else {
                (0..self.rows.len().saturating_sub(1)).rev().collect()
            };
            for k in ks {
                self.sort_row(k, downward);
            }
            let now = self.crossings();
            if now < fewest {
                fewest = now;
                best = self.rows.clone();
            }
            if fewest == 0 {
                break;
            }
        }
        self.rows = best;
        for row in &self.rows {
            for (i, &node) in row.iter().enumerate() {
                self.pos[node] = i;
            }
        }
    }

    /// Orders row `k` by the mean position of each node's neighbours in the row before
    /// (downward) or after it; a node without such neighbours keeps its place.
    fn sort_row(&mut self, k: usize, downward: bool) {
        let position = &self.pos;
        let mut keyed: Vec<(f64, usize)> = self.rows[k]
            .iter()
            .enumerate()
            .map(|(i, &node)| {
                let near = if downward {
                    &self.up[node]
                } else {
                    &self.down[node]
                };
                if near.is_empty() {
                    (i as f64, node)
                } else {
                    let sum: usize = near.iter().map(|&n| position[n]).sum();
                    (sum as f64 / near.len() as f64, node)
                }
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.rows[k] = keyed.into_iter().map(|(_, n)| n).collect();
        for (i, &node) in self.rows[k].iter().enumerate() {
            self.pos[node] = i;
        }
    }

    /// Edge crossings between all adjacent rows.
    fn crossings(&self) -> usize {
        let position = &self.pos;
        let mut total = 0;
        for row in &self.rows {
            let mut pairs: Vec<(usize, usize)> = row
                .iter()
                .flat_map(|&a| self.down[a].iter().map(move |&b| (a, b)))
                .map(|(a, b)| (position[a], position[b]))
                .collect();
            pairs.sort_unstable();
            total += inversions(pairs.iter().map(|p| p.1));
        }
        total
    }

    /// Coordinates: rows run left to right when the DAG is shallow, top to bottom when
    /// it is deep, each row centred on the widest one.
    fn place(&self, steps: &[Input]) -> Layout {
        let horizontal = self.rows.len() <= 5;
        let (layer_gap, rank_gap) = if horizontal {
            (56.0, 18.0)
        } else {
            (44.0, 28.0)
        };
        let (layer_step, rank_step) = if horizontal {
            (NODE_W + layer_gap, NODE_H + rank_gap)
        } else {
            (NODE_H + layer_gap, NODE_W + rank_gap)
        };
        let widest = self.rows.iter().map(Vec::len).max().unwrap_or(0) as f64;
        let mut at = vec![(0.0, 0.0); self.layer.len()];
        for (k, row) in self.rows.iter().enumerate() {
            let offset = (widest - row.len() as f64) / 2.0 * rank_step;
            for (i, &node) in row.iter().enumerate() {
                let (a, b) = (k as f64 * layer_step, offset + i as f64 * rank_step);
                at[node] = if horizontal { (a, b) } else { (b, a) };
                at[node].0 += MARGIN;
                at[node].1 += MARGIN;
            }
        }
        let along = self.rows.len() as f64 * layer_step - layer_gap;
        let across = widest * rank_step - rank_gap;
        let (w, h) = if horizontal {
            (along, across)
        } else {
            (across, along)
        };
        let nodes = steps
            .iter()
            .enumerate()
            .map(|(i, s)| Node {
                name: s.name.to_string(),
                label: shorten(s.name, 22),
                x: at[i].0,
                y: at[i].1,
                status: String::new(),
                href: String::new(),
            })
            .collect();
        let edges = self
            .chains
            .iter()
            .map(|chain| Edge {
                d: self.path(chain, &at, horizontal),
            })
            .collect();
        Layout {
            width: (w + 2.0 * MARGIN).max(0.0),
            height: (h + 2.0 * MARGIN).max(0.0),
            node_w: NODE_W,
            node_h: NODE_H,
            nodes,
            edges,
        }
    }

    /// A smooth path from the source's exit side, through each bend point (crossing the
    /// bend's layer in a straight line), into the target's entry side.
    fn path(&self, chain: &[usize], at: &[(f64, f64)], horizontal: bool) -> String {
        // Points where the edge enters and leaves each node of the chain.
        let ends = |node: usize| {
            let (x, y) = at[node];
            if horizontal {
                ((x, y + NODE_H / 2.0), (x + NODE_W, y + NODE_H / 2.0))
            } else {
                ((x + NODE_W / 2.0, y), (x + NODE_W / 2.0, y + NODE_H))
            }
        };
        let mut d = String::new();
        let (_, mut from) = ends(chain[0]);
        d.push_str(&format!("M{:.1} {:.1}", from.0, from.1));
        for (i, &node) in chain.iter().enumerate().skip(1) {
            let (into, out) = ends(node);
            let (c1, c2) = if horizontal {
                let dx = (into.0 - from.0) / 2.0;
                ((from.0 + dx, from.1), (into.0 - dx, into.1))
            } else {
                let dy = (into.1 - from.1) / 2.0;
                ((from.0, from.1 + dy), (into.0, into.1 - dy))
            };
            d.push_str(&format!(
                " C{:.1} {:.1} {:.1} {:.1} {:.1} {:.1}",
                c1.0, c1.1, c2.0, c2.1, into.0, into.1
            ));
            if i + 1 < chain.len() {
                d.push_str(&format!(" L{:.1} {:.1}", out.0, out.1));
            }
            from = out;
        }
        d
    }
}

/// Pairs out of order in a sequence (merge sort count), for crossing counts.
fn inversions(values: impl Iterator<Item = usize>) -> usize {
    fn count(v: &mut [usize]) -> usize {
        if v.len() < 2 {
            return 0;
        }
        let mid = v.len() / 2;
        let mut n = count(&mut v[..mid]) + count(&mut v[mid..]);
        let mut merged = Vec::with_capacity(v.len());
        let (mut i, mut j) = (0, mid);
        while i < mid && j < v.len() {
            if v[j] < v[i] {
                n += mid - i;
                merged.push(v[j]);
                j += 1;
            } else {
                merged.push(v[i]);
                i += 1;
            }
        }
        merged.extend_from_slice(&v[i..mid]);
        merged.extend_from_slice(&v[j..]);
        v.copy_from_slice(&merged);
        n
    }
    let mut v: Vec<usize> = values.collect();
    count(&mut v)
}

/// `text` cut to `max` characters with an ellipsis.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn run(spec: &[(&str, &[&str])]) -> Layout {
        let owned = dag(spec);
        let input: Vec<Input> = owned
            .iter()
            .map(|(n, d)| Input {
                name: n,
                depends: d,
            })
            .collect();
        layout(&input)
    }

    #[test]
    fn layers_follow_the_longest_path() {
        let l = run(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["a", "c"])]);
        let xs: Vec<f64> = l.nodes.iter().map(|n| n.x).collect();
        assert!(xs[0] < xs[1] && xs[1] < xs[2] && xs[2] < xs[3], "{xs:?}");
        assert_eq!(l.edges.len(), 4);
        // a→d skips two layers, so it bends twice (a straight run through each bend).
        assert!(l.edges.iter().any(|e| e.d.matches(" L").count() == 2));
    }

    #[test]
    fn barycenter_ordering_removes_crossings() {
        // Two independent chains whose first nodes are listed in the opposite order.
        let l = run(&[("a1", &[]), ("b1", &[]), ("b2", &["b1"]), ("a2", &["a1"])]);
        let y = |name: &str| l.nodes.iter().find(|n| n.name == name).map(|n| n.y);
        assert_eq!(y("a1") < y("b1"), y("a2") < y("b2"));
    }

    #[test]
    fn deep_dags_run_top_to_bottom_and_nothing_overlaps() {
        let names: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
        let spec: Vec<(&str, Vec<&str>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.as_str(),
                    if i == 0 {
                        vec![]
                    } else {
                        vec![names[i - 1].as_str()]
                    },
                )
            })
            .collect();
        let spec: Vec<(&str, &[&str])> = spec.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        let l = run(&spec);
        assert!(l.nodes.windows(2).all(|w| w[0].y + l.node_h < w[1].y));
        assert!(l.height > l.width);
    }

    #[test]
    fn long_edges_over_many_layers_stay_cheap() {
        // A 400-step chain where every step also feeds the last: ~80 000 bend points.
        let names: Vec<String> = (0..400).map(|i| format!("s{i}")).collect();
        let deps: Vec<Vec<String>> = (0..400)
            .map(|i| match i {
                0 => vec![],
                399 => names[..399].to_vec(),
                _ => vec![names[i - 1].clone()],
            })
            .collect();
        let input: Vec<Input> = names
            .iter()
            .zip(&deps)
            .map(|(n, d)| Input {
                name: n,
                depends: d,
            })
            .collect();
        let l = layout(&input);
        assert_eq!(l.nodes.len(), 400);
        assert_eq!(l.edges.len(), 399 + 398);
    }

    #[test]
    fn counts_inversions() {
        assert_eq!(inversions([0, 1, 2].into_iter()), 0);
        assert_eq!(inversions([2, 1, 0].into_iter()), 3);
        assert_eq!(inversions([1, 0, 1].into_iter()), 1);
    }

    #[test]
    fn shortens_long_names() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdefgh", 5), "abcd…");
    }
}
